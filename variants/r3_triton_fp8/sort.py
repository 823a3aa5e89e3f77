"""The sort launch (T > 128): each local expert's rows in token order, and their count.

At smaller T the GEMMs derive the same rows from the [T, 8] expert ids themselves (`rows.tile_rows`
with INLINE), so this launch exists only where that would cost more than a launch.
"""

import triton
import triton.language as tl

from .launch import Kernel


@triton.jit(do_not_specialize=["T", "local_off"])
def sort_kernel(
    ids_ptr,
    counts_ptr,
    lists_ptr,
    T,
    local_off,
    TOPK: tl.constexpr,
    BC: tl.constexpr,
    NCHUNK: tl.constexpr,
):
    """Program e: the rows (token * TOPK + slot) of local expert e in token order, and their count."""
    e = tl.program_id(0)
    k = tl.arange(0, TOPK)[None, :]
    base = 0
    for ci in range(0, NCHUNK):
        t = ci * BC + tl.arange(0, BC)
        tm = t < T
        loc = tl.load(ids_ptr + t[:, None] * TOPK + k, mask=tm[:, None], other=-1) - local_off
        m = loc == e
        hit = tl.max(m.to(tl.int32), axis=1)  # a token selects an expert at most once
        slot = tl.sum(tl.where(m, k, 0), axis=1)
        pos = base + tl.cumsum(hit, axis=0) - hit
        tl.store(lists_ptr + e * T + pos, t * TOPK + slot, mask=hit > 0)
        base += tl.sum(hit)
    tl.store(counts_ptr + e, base)


def launch_for(ws) -> Kernel:
    """The sort launch of workspace `ws`: one program per local expert."""
    bt = ws.tiles.sort_block_t
    return Kernel(sort_kernel, (ws.NL,), dict(TOPK=ws.TOPK, BC=bt, NCHUNK=triton.cdiv(ws.T, bt)), num_warps=4)
