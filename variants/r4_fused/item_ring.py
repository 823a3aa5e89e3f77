"""How the large-T Gluon GEMMs (`gemm1_gluon.py`, `gemm2_gluon.py`) share out their work items: the
producer warp of each CTA claims items and hands each one to its two consumer warpgroups through a ring
of shared-memory slots with their own mbarriers, beside the ring of K-block stages.

Claiming (DYNAMIC): a CTA's first item is its program id, each next one `num_programs + atomicAdd(claims,
1)`, claimed while the current item's loads go out (its latency under them). A CTA that starts late (GEMM2
under GEMM1, v60) or whose items are short (padding halves) simply takes more of them; the counter is
zeroed by the permute launch each call. Without DYNAMIC: the static stride `item + num_programs`.

What a slot holds: `item * 4 + flags`, flags bit WG set when warpgroup WG's 64 rows of the item's tile
are all padding (the consumer then issues no MMA; the producer loads that flag, off the consumers' path;
only the second half of an expert's last tile can be); -1 once the CTA has no more items. ITEM_SLOTS = 2
is enough: an item has at least as many K blocks as the stage ring has stages, so the producer is never
more than one item ahead.
"""

import triton.language as tl

from .gemm_blockscaled import HAVE_GLUON
from .permute import BM

ITEM_SLOTS = tl.constexpr(2)
TILE_ROWS = tl.constexpr(BM)  # rows of a permuted tile: both consumers' 64

if HAVE_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier

    ONE_WARP = gl.constexpr(gl.BlockedLayout([1], [32], [1], [0]))  # a producer of one warp (gl.num_warps() there)
    WARPGROUP = gl.constexpr(gl.BlockedLayout([1], [32], [4], [0]))  # a consumer's four (or a producer's)

    @gluon.jit
    def allocate():
        """(slots, ready, empty): the ring's shared memory and its barriers, initialised."""
        slots = gl.allocate_shared_memory(gl.int32, [ITEM_SLOTS, 1], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        ready = gl.allocate_shared_memory(gl.int64, [ITEM_SLOTS, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [ITEM_SLOTS, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(ITEM_SLOTS):
            mbarrier.init(ready.index(i), count=1)  # the producer's arrive
            mbarrier.init(empty.index(i), count=2)  # one arrive per consumer warpgroup
        return slots, ready, empty

    @gluon.jit
    def next_item(item, claims_ptr, DYNAMIC: gl.constexpr):
        """The CTA's item after `item`."""
        if DYNAMIC:
            return gl.num_programs(0) + gl.atomic_add(claims_ptr, 1, sem="relaxed")
        return item + gl.num_programs(0)

    @gluon.jit
    def padding_flags(rid_ptr, tile, SKIP_PADDING: gl.constexpr):
        """Bit WG set when warpgroup WG's 64 rows of `tile` are all padding (row id -1): an expert's rows
        fill its tiles from the first row on, so only a last tile's second half can be; 0 without
        SKIP_PADDING."""
        if SKIP_PADDING:
            return (gl.load(rid_ptr + tile * TILE_ROWS + TILE_ROWS // 2) < 0).to(gl.int32) * 2
        return 0

    @gluon.jit
    def publish(slots, ready, empty, j, value):
        """The producer (one warp or four): `value` (item * 4 + flags, or -1) into slot j of the ring, once
        its last reader is done."""
        s = j % ITEM_SLOTS
        mbarrier.wait(empty.index(s), ((j // ITEM_SLOTS) & 1) ^ 1)  # a fresh barrier passes parity 1
        if gl.num_warps() == 1:
            slots.index(s).store(gl.full([1], value, gl.int32, ONE_WARP))
        else:
            slots.index(s).store(gl.full([1], value, gl.int32, WARPGROUP))
        gl.thread_barrier()  # the store before the warp's one arrive
        mbarrier.arrive(ready.index(s), count=1)

    @gluon.jit
    def take(slots, ready, empty, j):
        """A consumer warpgroup: the value in slot j, the slot released once all its threads have it."""
        s = j % ITEM_SLOTS
        mbarrier.wait(ready.index(s), (j // ITEM_SLOTS) & 1)
        value = gl.max(slots.index(s).load(WARPGROUP), axis=0)
        gl.thread_barrier()  # every thread's read before the warpgroup's one arrive
        mbarrier.arrive(empty.index(s), count=1)
        return value
