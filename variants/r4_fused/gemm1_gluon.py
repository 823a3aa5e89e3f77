"""GEMM1 of the large-T path on Hopper: a grouped, warp-specialized Gluon kernel over the permuted rows.

    G1[rows of tile t, columns jb] = A[rows of tile t] @ W1[e(t)][up | gate rows of jb]^T, block-scaled,
    then C = silu(gate) * up stored as a hi/lo FP8 pair in the permuted row order

so that the grouped GEMM2 (`gemm2_gluon.py`) loads C's tiles with TMA. The rows come from `permute.py`:
each tile's row ids (rid_perm, -1 for padding), its expert and the number of tiles; A is hidden_states
at those rows: the permute's copy of them (A_perm [MP, H] and its scales [H/128, MP], loaded by TMA),
or with GATHER gathered by this kernel's producer (measured slower, v66). C's layout, rung 3's pair in
permuted rows (with SHARED_LO, the default, the lo term's scale is the hi term's, stored in both places):

    cq_perm [MP, 2I]        fp8: columns jb * 256 + (0..127) the hi term of I block jb, + 128 the lo term
    cs_perm [2I / 128, MP]  fp32: the scale of C block k = 2 jb + term of each row (rows contiguous, as
                            hidden_states_scale), so C reads as one [MP, 2I] block-scaled operand

The kernel is `gemm_blockscaled.py`'s version (b) (GEMM_NOTES.md: 1071 TFLOP/s at GEMM1's shape, dense)
made grouped and given GEMM1's epilogue:
- work items (tile, column block jb) in grouped order (GROUP_M tiles of one jb run together: they share
  the 128 up and 128 gate rows of W1[e], and consecutive tiles mostly have the same expert), claimed
  from a counter by each CTA's producer warp and handed to its consumers (`item_ring.py`, v61);
- a producer partition: per K block, both 64-row halves of the A tile with their 64 scales each, and
  W1's 128 up rows and 128 gate rows of jb (48.5 KB a stage, 4 stages); with GATHER four warps at 56
  registers gather A's rows and scales by 16-byte cp.async at the row ids (padding rows zero-filled),
  each thread arriving on the stage's barrier when its copies land, and W1 comes by TMA; otherwise one
  warp issues it all by TMA from the copy. The consumers then have 224 registers, else 240;
- two consumer warpgroups (rows 0-63 and 64-127), each per K block: up wgmma into the spare partial,
  wait, promote into acc_u (scale a_scale[row] * w1_scale[up block]); gate likewise into acc_g. Three 64
  x 128 fp32 tiles per thread (192 registers). The wait for the next stage runs under the up wgmma, off
  the warpgroup's latency chain (v66). With GATHER each fences the async proxy after a stage's wait
  (cp.async writes through the generic proxy, wgmma reads through the async one): ~5% of the kernel,
  under the wgmma or not. One warpgroup's
  promotion runs under the other's MMAs (the two are not synchronised). A warpgroup whose 64 rows are
  all padding (the second half of an expert's last tile, when that holds <= 64 rows) only passes the
  stages on: no MMA;
- epilogue per warpgroup: SwiGLU, hi = fp8(C / s_hi), lo = fp8((C - hi s_hi) / s_lo) per row and 128
  columns (the math of `_shared/quant.quant_block`, written again here: Gluon cannot call Triton
  functions; SHARED_LO: s_lo = s_hi, GEMM_NOTES.md v19), stored at the tile's own rows (padding rows are
  zeros: C = 0, scales 0);
- with SIGNAL (`large_t.Workspace.gemm2_under_gemm1`): each warpgroup, its item's C stored, adds one to
  tile_done[tile] (a barrier of its 128 threads, then a release atomic), and the kernel lets GEMM2 (launched
  with PDL) start in the SMs its finished CTAs leave: GEMM2 reads a tile once its 2 x I/128 signals are in.

Hopper (sm_90) only: wgmma (`gemm_blockscaled.gluon_supported`). Elsewhere (sm_100, the CPU
interpreter) the large-T path is rung 3's.
"""

import triton.language as tl

from .gemm_blockscaled import HAVE_GLUON
from .launch import FP8_MAX, Kernel
from .permute import BM as TILE_ROWS
from .routing import TOP_K

if HAVE_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.ampere import async_copy
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor

    from . import item_ring
    from .gemm_blockscaled import _gl_grouped_tile, fp8_tile_layout, row_scaled_descriptors

ROWS_PER_CONSUMER = 64  # rows per consumer warpgroup: one m64 wgmma
COLUMNS = 128  # columns of I per work item (128 up and 128 gate rows of W1)
HALF_M = tl.constexpr(ROWS_PER_CONSUMER)  # the same, for the kernels
BJ = tl.constexpr(COLUMNS)
TOPK = tl.constexpr(TOP_K)

if HAVE_GLUON:
    # a consumer's [64, 128] fp32 accumulator as the m64n128 wgmma leaves it, its rows and its columns
    # (shared with gemm2_gluon.py)
    ACC = gl.constexpr(gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 128, 32]))
    ACC_ROWS = gl.constexpr(gl.SliceLayout(1, ACC))
    ACC_COLS = gl.constexpr(gl.SliceLayout(0, ACC))
    # the gathering producer's four warps: a [64, 128] fp8 half tile as 16 bytes a thread (4 rows each),
    # a [1, 64] vector of row scales
    GATHER_ROWS = gl.constexpr(gl.BlockedLayout([1, 16], [4, 8], [4, 1], [1, 0]))
    GATHER_SCALES = gl.constexpr(gl.BlockedLayout([1, 1], [1, 32], [1, 4], [1, 0]))

    @gluon.jit
    def row_scale_vectors(bufs):
        """A ring of [1, 64] fp32 row-scale TMA tiles viewed as [n, 64] vectors (`.index(i).load(ACC_ROWS)`)."""
        return bufs._reinterpret(gl.float32, [bufs.shape[0], HALF_M], gl.SwizzledSharedLayout(1, 1, 1, [0]))

    @gluon.jit
    def _producer_tma(a_desc, w_desc, sa_desc, a_bufs, u_bufs, g_bufs, sa_bufs, ready, empty, items, item_ready,
                      item_empty, tile_expert_ptr, n_tiles_ptr, rid_ptr, claims_ptr, hs_ptr, hss_ptr, T, GROUP_M, H, I,
                      SKIP_PADDING, DYNAMIC):  # fmt: skip
        # a partition's arguments arrive as runtime values (Triton 3.6): GATHER, which picks layouts, is
        # given here as a literal
        _producer(a_desc, w_desc, sa_desc, a_bufs, u_bufs, g_bufs, sa_bufs, ready, empty, items, item_ready,
                  item_empty, tile_expert_ptr, n_tiles_ptr, rid_ptr, claims_ptr, hs_ptr, hss_ptr, T, GROUP_M, H, I,
                  SKIP_PADDING, DYNAMIC, False)  # fmt: skip

    @gluon.jit
    def _producer_gather(a_desc, w_desc, sa_desc, a_bufs, u_bufs, g_bufs, sa_bufs, ready, empty, items, item_ready,
                         item_empty, tile_expert_ptr, n_tiles_ptr, rid_ptr, claims_ptr, hs_ptr, hss_ptr, T, GROUP_M,
                         H, I, SKIP_PADDING, DYNAMIC):  # fmt: skip
        _producer(a_desc, w_desc, sa_desc, a_bufs, u_bufs, g_bufs, sa_bufs, ready, empty, items, item_ready,
                  item_empty, tile_expert_ptr, n_tiles_ptr, rid_ptr, claims_ptr, hs_ptr, hss_ptr, T, GROUP_M, H, I,
                  SKIP_PADDING, DYNAMIC, True)  # fmt: skip

    @gluon.jit
    def _producer(a_desc, w_desc, sa_desc, a_bufs, u_bufs, g_bufs, sa_bufs, ready, empty, items, item_ready,
                  item_empty, tile_expert_ptr, n_tiles_ptr, rid_ptr, claims_ptr, hs_ptr, hss_ptr, T, GROUP_M, H, I,
                  SKIP_PADDING: gl.constexpr, DYNAMIC: gl.constexpr, GATHER: gl.constexpr):  # fmt: skip
        """Claims the CTA's items (`item_ring`), hands each to the consumers, and issues the loads of its K
        blocks into the ring of stages, across item boundaries: W1's tiles by TMA; the tile's activation
        rows and their scales by TMA from the permuted copy (one warp), or with GATHER gathered by
        `cp.async` straight from hidden_states at the tile's row ids (four warps; padding rows zero-filled)."""
        BK: gl.constexpr = 128
        NKB = H // BK
        NJ = I // BJ
        STAGES: gl.constexpr = u_bufs.shape[0]
        nbytes: gl.constexpr = 2 * (a_desc.block_type.nbytes + w_desc.block_type.nbytes + sa_desc.block_type.nbytes)
        n_tiles = gl.load(n_tiles_ptr)
        it = 0
        j = 0
        item = gl.program_id(0)
        while item < n_tiles * NJ:
            following = item_ring.next_item(item, claims_ptr, DYNAMIC)  # claimed now: its latency under the loads
            tile, jb = _gl_grouped_tile(item, n_tiles, NJ, GROUP_M)
            flags = item_ring.padding_flags(rid_ptr, tile, SKIP_PADDING)
            item_ring.publish(items, item_ready, item_empty, j, item * 4 + flags)
            e = gl.load(tile_expert_ptr + tile)
            w_row = e * (2 * I) + jb * BJ  # W1 viewed as [NL * 2I, H]: the up rows; the gate rows I further
            if GATHER:
                it = _gather_item(a_bufs, u_bufs, g_bufs, sa_bufs, ready, empty, w_desc, rid_ptr, hs_ptr, hss_ptr, T,
                                  tile, w_row, it, H, I)  # fmt: skip
            else:
                for kb in range(NKB):
                    s = it % STAGES
                    mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
                    bar = ready.index(s)
                    mbarrier.expect(bar, nbytes)
                    for h in gl.static_range(2):
                        m = tile * (2 * HALF_M) + h * HALF_M
                        tma.async_copy_global_to_shared(a_desc, [m, kb * BK], bar, a_bufs.index(2 * s + h))
                        tma.async_copy_global_to_shared(sa_desc, [kb, m], bar, sa_bufs.index(2 * s + h))
                    tma.async_copy_global_to_shared(w_desc, [w_row, kb * BK], bar, u_bufs.index(s))
                    tma.async_copy_global_to_shared(w_desc, [w_row + I, kb * BK], bar, g_bufs.index(s))
                    it += 1
            item = following
            j += 1
        item_ring.publish(items, item_ready, item_empty, j, -1)  # no more items

    @gluon.jit
    def _gather_item(a_bufs, u_bufs, g_bufs, sa_bufs, ready, empty, w_desc, rid_ptr, hs_ptr, hss_ptr, T, tile, w_row,
                     it, H, I):  # fmt: skip
        """The gathering producer's loads of one item (`tile`, W1 rows from `w_row`), from stage counter `it`
        on: per K block both halves' activation rows and their scales by cp.async from hidden_states at the
        tile's row ids (each thread arrives on the stage's barrier once its copies land), then W1's up and
        gate tiles by TMA. Returns the stage counter."""
        BK: gl.constexpr = 128
        STAGES: gl.constexpr = u_bufs.shape[0]
        w_nbytes: gl.constexpr = 2 * w_desc.block_type.nbytes
        cols = gl.arange(0, BK, layout=gl.SliceLayout(0, GATHER_ROWS))
        rows0, ok0, srow0, sok0 = _gather_rows(rid_ptr, hs_ptr, hss_ptr, tile * (2 * HALF_M), H)
        rows1, ok1, srow1, sok1 = _gather_rows(rid_ptr, hs_ptr, hss_ptr, tile * (2 * HALF_M) + HALF_M, H)
        for kb in range(H // BK):
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
            bar = ready.index(s)
            k = kb * BK + cols
            async_copy.async_copy_global_to_shared(a_bufs.index(2 * s), rows0[:, None] + k[None, :], ok0[:, None])
            async_copy.async_copy_global_to_shared(a_bufs.index(2 * s + 1), rows1[:, None] + k[None, :], ok1[:, None])
            async_copy.async_copy_global_to_shared(sa_bufs.index(2 * s), (srow0 + kb * T)[None, :], sok0[None, :])
            async_copy.async_copy_global_to_shared(sa_bufs.index(2 * s + 1), (srow1 + kb * T)[None, :], sok1[None, :])
            async_copy.mbarrier_arrive(bar, increment_count=False)  # each thread, once its copies land
            mbarrier.expect(bar, w_nbytes)
            tma.async_copy_global_to_shared(w_desc, [w_row, kb * BK], bar, u_bufs.index(s))
            tma.async_copy_global_to_shared(w_desc, [w_row + I, kb * BK], bar, g_bufs.index(s))
            it += 1
        return it

    @gluon.jit
    def _gather_rows(rid_ptr, hs_ptr, hss_ptr, first, H):
        """For 64 permuted rows from `first`: each row's activation row pointer and whether it is a real row
        (in GATHER_ROWS' row slice), and the pointer of its scale in K block 0 and the same test (in
        GATHER_SCALES' column slice). Padding rows (row id -1) point at token 0 and are masked off."""
        r = first + gl.arange(0, HALF_M, layout=gl.SliceLayout(1, GATHER_ROWS))
        rid = gl.load(rid_ptr + r)
        ok = rid >= 0
        rows = hs_ptr + gl.multiple_of(gl.where(ok, rid // TOPK, 0).to(gl.int64) * H, 16)  # H: 128s
        rs = first + gl.arange(0, HALF_M, layout=gl.SliceLayout(0, GATHER_SCALES))
        rid_s = gl.load(rid_ptr + rs)
        sok = rid_s >= 0
        srow = hss_ptr + gl.where(sok, rid_s // TOPK, 0)
        return rows, ok, srow, sok

    @gluon.jit
    def _promote_block(a_smem, w_smem, spare, acc, scale, a_lo=None, ready=None, next_it=0, wait_next=False,
                       fence=False):  # fmt: skip
        """(acc + (A @ W^T) * scale[:, None], the partial) for one K block: the wgmma into the registers
        of `spare` (use_acc=False: its values are ignored), waited for, then scaled into acc. `a_lo`: a
        second A tile on the same rows with the same scale (C's lo term, gemm2_gluon.py), accumulated by
        the same partial: one wait and one promotion for both. With `ready` and `wait_next`: while the
        wgmma runs, the wait for stage counter `next_it` (`wait_stage`, fenced if `fence`)."""
        part = warpgroup_mma(a_smem, w_smem.permute((1, 0)), spare, use_acc=False, is_async=True)
        if a_lo is not None:
            part = warpgroup_mma(a_lo, w_smem.permute((1, 0)), part, is_async=True)
        if ready is not None:
            if wait_next:
                wait_stage(ready, next_it, fence)
        part = warpgroup_mma_wait(num_outstanding=0, deps=(part,))
        acc = acc + part * scale[:, None]
        # a wait with nothing in flight that takes the new acc: the next wgmma, issued after it, cannot
        # overlap these FFMAs (ptxas would give it a second partial: 4 tiles of 64 registers, spills)
        acc, part = warpgroup_mma_wait(num_outstanding=0, deps=(acc, part))
        return acc, part

    @gluon.jit
    def wait_stage(ready, it, FENCE):
        """Waits for the loads of stage counter `it`; with FENCE (activation rows that came by cp.async,
        which writes through the generic proxy) then fences the async proxy, through which wgmma reads."""
        STAGES: gl.constexpr = ready.shape[0]
        mbarrier.wait(ready.index(it % STAGES), (it // STAGES) & 1)
        if FENCE:
            fence_async_shared()

    @gluon.jit
    def pass_stages(ready, empty, it, NKB):
        """A consumer's K loop without its MMAs (rows all padding: the accumulators stay zero): each
        stage waited for and released, so the ring stays in step with the producer and the other
        consumer. Returns the stage counter."""
        STAGES: gl.constexpr = ready.shape[0]
        for i in range(it, it + NKB):
            s = i % STAGES
            mbarrier.wait(ready.index(s), (i // STAGES) & 1)
            mbarrier.arrive(empty.index(s), count=1)
        return it + NKB

    @gluon.jit
    def launch_dependents():
        """Programmatic dependent launch: the next kernel of the stream, launched with PDL, may start its
        CTAs in the SMs this kernel's finished CTAs free (it must not read what this one writes without
        its own synchronisation)."""
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; mov.b32 $0, 0;", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)  # fmt: skip

    @gluon.jit
    def _quant(c):
        """fp8 values (as fp32, clamped) and scales (amax / 448; 0 for an all-zero row) per row of c."""
        amax = gl.max(gl.abs(c), axis=1)
        scale = amax / FP8_MAX
        q = c / gl.where(amax > 0, scale, 1.0)[:, None]
        q = gl.minimum(gl.maximum(q, -FP8_MAX), FP8_MAX)
        return q, scale

    @gluon.jit
    def _consumer(a_bufs, u_bufs, g_bufs, sa_bufs, ready, empty, items, item_ready, item_empty, w1s_ptr,
                  tile_expert_ptr, n_tiles_ptr, cq_ptr, cs_ptr, tile_done_ptr, GROUP_M, H, I, MP,
                  SHARED_LO: gl.constexpr, SIGNAL: gl.constexpr, GATHER: gl.constexpr, WG: gl.constexpr):  # fmt: skip
        """One warpgroup: rows [WG*64, WG*64+64) of every item's tile, items as the producer hands them
        over (no MMA where the rows are all padding: the other warpgroup then has the tensor cores alone)."""
        BK: gl.constexpr = 128
        NKB = H // BK
        NJ = I // BJ
        STAGES: gl.constexpr = u_bufs.shape[0]
        sa_rows = row_scale_vectors(sa_bufs)
        cols = gl.arange(0, BJ, layout=ACC_COLS)
        n_tiles = gl.load(n_tiles_ptr)
        it = 0
        j = 0
        value = item_ring.take(items, item_ready, item_empty, j)
        while value >= 0:
            item = value // 4
            idle = ((value >> WG) & 1) != 0
            tile, jb = _gl_grouped_tile(item, n_tiles, NJ, GROUP_M)
            e = gl.load(tile_expert_ptr + tile)
            su_ptr = w1s_ptr + (e * (2 * NJ) + jb) * NKB  # w1 scales [NL, 2I/128, H/128]: up block jb
            sg_ptr = su_ptr + NJ * NKB  # and its gate block
            acc_u = gl.zeros([HALF_M, BJ], gl.float32, ACC)
            acc_g = gl.zeros([HALF_M, BJ], gl.float32, ACC)
            spare = gl.zeros([HALF_M, BJ], gl.float32, ACC)  # the partial's registers (values unused)
            if idle:
                it = pass_stages(ready, empty, it, NKB)  # C = 0 below, as the MMAs of zero rows would give
            else:
                wait_stage(ready, it, GATHER)
                for kb in range(NKB):
                    s = it % STAGES
                    sa = sa_rows.index(2 * s + WG).load(ACC_ROWS)
                    su = gl.load(su_ptr + kb)
                    sg = gl.load(sg_ptr + kb)
                    a_smem = a_bufs.index(2 * s + WG)
                    # the next stage's wait under this K block's up wgmma, off the warpgroup's latency chain (v66)
                    acc_u, spare = _promote_block(a_smem, u_bufs.index(s), spare, acc_u, sa * su, None, ready, it + 1,
                                                  kb + 1 < NKB, GATHER)  # fmt: skip
                    acc_g, spare = _promote_block(a_smem, g_bufs.index(s), spare, acc_g, sa * sg)
                    mbarrier.arrive(empty.index(s), count=1)
                    it += 1
            # epilogue: SwiGLU and the hi/lo pair, stored at the tile's rows (cq_perm, cs_perm)
            p = tile * (2 * HALF_M) + WG * HALF_M + gl.arange(0, HALF_M, layout=ACC_ROWS)
            c = acc_g / (1.0 + gl.exp(-acc_g)) * acc_u
            q, s_hi = _quant(c)
            q8 = q.to(gl.float8e4nv)
            offs = p.to(gl.int64)[:, None] * (2 * I) + (jb * (2 * BJ) + cols)[None, :]
            gl.store(cq_ptr + offs, q8)
            gl.store(cs_ptr + (2 * jb) * MP + p, s_hi)
            resid = c - q8.to(gl.float32) * s_hi[:, None]
            if SHARED_LO:  # the lo term in hi's scale (|resid| <= 16 s_hi), so GEMM2 sums both in one partial
                ql = gl.minimum(gl.maximum(resid / gl.where(s_hi > 0, s_hi, 1.0)[:, None], -FP8_MAX), FP8_MAX)
                s_lo = s_hi
            else:
                ql, s_lo = _quant(resid)
            gl.store(cq_ptr + offs + BJ, ql.to(gl.float8e4nv))
            gl.store(cs_ptr + (2 * jb + 1) * MP + p, s_lo)
            if SIGNAL:  # every thread's stores of this warpgroup before its one release
                gl.thread_barrier()
                gl.atomic_add(tile_done_ptr + tile, 1, sem="release", scope="gpu")
            j += 1
            value = item_ring.take(items, item_ready, item_empty, j)

    @gluon.jit
    def _consumer_1(a_bufs, u_bufs, g_bufs, sa_bufs, ready, empty, items, item_ready, item_empty, w1s_ptr,
                    tile_expert_ptr, n_tiles_ptr, cq_ptr, cs_ptr, tile_done_ptr, GROUP_M, H, I, MP, SHARED_LO,
                    SIGNAL, GATHER):  # fmt: skip
        # a worker partition takes no literal arguments (Triton 3.6), hence this wrapper (GEMM_NOTES.md)
        _consumer(a_bufs, u_bufs, g_bufs, sa_bufs, ready, empty, items, item_ready, item_empty, w1s_ptr,
                  tile_expert_ptr, n_tiles_ptr, cq_ptr, cs_ptr, tile_done_ptr, GROUP_M, H, I, MP, SHARED_LO, SIGNAL,
                  GATHER, 1)  # fmt: skip

    @gluon.jit
    def gemm1_gluon_kernel(a_desc, w_desc, sa_desc, w1s_ptr, tile_expert_ptr, n_tiles_ptr, rid_ptr, cq_ptr, cs_ptr,
                           tile_done_ptr, claims_ptr, hs_ptr, hss_ptr, T, H, I, MP, GROUP_M: gl.constexpr,
                           STAGES: gl.constexpr, SHARED_LO: gl.constexpr, SKIP_PADDING: gl.constexpr,
                           SIGNAL: gl.constexpr, DYNAMIC: gl.constexpr, GATHER: gl.constexpr,
                           CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):  # fmt: skip
        if SIGNAL:  # GEMM2 may take the SMs of finished CTAs (it waits on tile_done, not on this kernel's end)
            launch_dependents()
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [2 * STAGES, HALF_M, 128], a_desc.layout)
        sa_bufs = gl.allocate_shared_memory(sa_desc.dtype, [2 * STAGES, 1, HALF_M], sa_desc.layout)
        u_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BJ, 128], w_desc.layout)
        g_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES, BJ, 128], w_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            # the producer's expect, then the TMA bytes; with GATHER also one cp.async arrive per producer thread
            mbarrier.init(ready.index(i), count=129 if GATHER else 1)
            mbarrier.init(empty.index(i), count=2)  # one arrive per consumer warpgroup
        items, item_ready, item_empty = item_ring.allocate()
        consumer_args = (a_bufs, u_bufs, g_bufs, sa_bufs, ready, empty, items, item_ready, item_empty, w1s_ptr,
                         tile_expert_ptr, n_tiles_ptr, cq_ptr, cs_ptr, tile_done_ptr, GROUP_M, H, I, MP, SHARED_LO,
                         SIGNAL, GATHER)  # fmt: skip
        producer_args = (a_desc, w_desc, sa_desc, a_bufs, u_bufs, g_bufs, sa_bufs, ready, empty, items, item_ready,
                         item_empty, tile_expert_ptr, n_tiles_ptr, rid_ptr, claims_ptr, hs_ptr, hss_ptr, T, GROUP_M, H,
                         I, SKIP_PADDING, DYNAMIC)  # fmt: skip
        if GATHER:  # a producer of four warps
            gl.warp_specialize([(_consumer, consumer_args + (0,)), (_consumer_1, consumer_args),
                                (_producer_gather, producer_args)], [4, 4], [CONSUMER_REGS, PRODUCER_REGS])  # fmt: skip
        else:
            gl.warp_specialize([(_consumer, consumer_args + (0,)), (_consumer_1, consumer_args),
                                (_producer_tma, producer_args)], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])  # fmt: skip


def launch_for(ws, sms, *, stages=4, group_m=8, maxnreg=168) -> Kernel:
    """The GEMM1 launch of large-T workspace `ws` on `sms` SMs (C's lo term in hi's scale if
    `ws.shared_lo_scale`; no MMA on all-padding halves if `ws.skip_padding_halves`; the rows gathered
    from hidden_states if `ws.gather_rows`). 4 + 4 + 1 (4 when gathering) warps in three warpgroups: 168
    registers x 384 threads fit 64K, and setmaxnreg moves the producer's spare ones to the consumers:
    240 + 240 + 24, or 224 + 224 + 56 for the gathering producer's addresses (at 48 one 64-bit value of
    the prologue spills; no spill either way here, offline)."""
    consumer_regs, producer_regs = (224, 56) if ws.gather_rows else (240, 24)
    assert TILE_ROWS == 2 * ROWS_PER_CONSUMER, "a permuted tile is both consumers' rows"
    items = ws.perm_max_tiles * (ws.I // COLUMNS)
    consts = dict(GROUP_M=group_m, STAGES=stages, SHARED_LO=ws.shared_lo_scale, SKIP_PADDING=ws.skip_padding_halves,
                  SIGNAL=ws.gemm2_under_gemm1, DYNAMIC=ws.dynamic_items, GATHER=ws.gather_rows,
                  CONSUMER_REGS=consumer_regs, PRODUCER_REGS=producer_regs)  # fmt: skip
    return Kernel(gemm1_gluon_kernel, (min(sms, items),), consts, num_warps=4, maxnreg=maxnreg)


def fixed_arguments(ws) -> dict:
    """What the launch's arguments keep from call to call, built once per workspace: the TMA descriptors
    of the permuted rows and their scales, and W1's tile layout."""
    a, sa = row_scaled_descriptors(ws.a_perm, ws.sa_perm, ROWS_PER_CONSUMER)
    return dict(a=a, sa=sa, w_layout=fp8_tile_layout(COLUMNS))


def arguments(ws, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale) -> tuple:
    """The launch's runtime arguments: TMA descriptors of the permuted rows, W1 (viewed [NL * 2I, H]:
    expert e's up rows, then its gate rows I further) and the rows' scales, then pointers (the activations
    themselves, which a gathering producer reads) and sizes."""
    NL, N1, H = gemm1_weights.shape
    f = ws.gemm1_fixed
    w_desc = GluonTensorDescriptor.from_tensor(gemm1_weights.view(NL * N1, H), [COLUMNS, 128], f["w_layout"])
    return (f["a"], w_desc, f["sa"], gemm1_weights_scale, ws.tile_expert, ws.n_tiles, ws.rid_perm, ws.cq_perm,
            ws.cs_perm, ws.tile_done, ws.gemm1_claims, hidden_states, hidden_states_scale, hidden_states.shape[0], H,
            N1 // 2, ws.cs_perm.shape[1])  # fmt: skip
