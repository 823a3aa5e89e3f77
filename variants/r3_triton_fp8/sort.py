"""The sort launch (T > 128): each local expert's rows in token order, and their count.

At smaller T the GEMMs derive the same rows from the [T, 8] expert ids themselves (`rows.tile_rows`
with INLINE), so this launch exists only where that would cost more than a launch.
"""

import triton
import triton.language as tl

from .launch import Kernel
from .rows import expert_rows


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
    expert_rows(tl.program_id(0), ids_ptr, counts_ptr, lists_ptr, T, local_off, TOPK, BC, NCHUNK)


def launch_for(ws) -> Kernel:
    """The sort launch of workspace `ws`: one program per local expert."""
    bt = ws.tiles.sort_block_t
    return Kernel(sort_kernel, (ws.NL,), dict(TOPK=ws.TOPK, BC=bt, NCHUNK=triton.cdiv(ws.T, bt)),
                  num_warps=ws.tiles.sort_warps)  # fmt: skip
