"""The permute launch of the large-T path: each local expert's activation rows copied into one
contiguous, tile-padded buffer, so that the grouped GEMM1 (`gemm1_gluon.py`) loads its A tiles with
TMA (Hopper has no TMA gather).

The M tiles of BM = 128 rows are numbered expert by expert, as everywhere (`rows.tile_rows`, from the
sort's lists): tile t's rows are rows t * BM .. t * BM + BM - 1 of

    a_perm  [MP, H]        fp8, the token's hidden_states row (zeros past the expert's count)
    sa_perm [H / 128, MP]  fp32, its block scales (the layout of hidden_states_scale; 0 past the count)
    rid_perm [MP]          int32, the row id token * TOPK + slot, -1 past the count

with tile_expert[t] its local expert and n_tiles[0] the number of tiles; tile_done[t] is zeroed for
GEMM1's completion signals (GEMM2 starts on a tile when they are all in), and claims[0], claims[4] for
the GEMMs' item counters (`item_ring.py`). MP = max_tiles * BM: the worst case, fixed per T.

The copy of a_perm and sa_perm: one program per (tile, group of K blocks), in a single streaming pass,
each activation row read once per expert that selected it, written once. With
`large_t.Workspace(gather_rows=True)` GEMM1 gathers the rows and scales itself and this launch writes
only the row ids, tiles and counters (one program a tile). Programs past the real tiles exit.
"""

import triton
import triton.language as tl

from .launch import Kernel
from .rows import expert_counts, tile_rows

BM = 128  # rows per M tile: the grouped GEMM1's tile (two consumer warpgroups of 64)


@triton.jit(do_not_specialize=["T"])
def permute_kernel(
    hs_ptr, hss_ptr, counts_ptr, lists_ptr, a_ptr, sa_ptr, rid_ptr, tile_expert_ptr, n_tiles_ptr, tile_done_ptr,
    claims_ptr, T,
    MP: tl.constexpr, NL: tl.constexpr, NLP: tl.constexpr, H: tl.constexpr, TOPK: tl.constexpr,
    BM: tl.constexpr, KB_PER_PROGRAM: tl.constexpr, COPY_ROWS: tl.constexpr,
):  # fmt: skip
    BK: tl.constexpr = 128
    tile = tl.program_id(0)
    kg = tl.program_id(1)
    c = expert_counts(None, counts_ptr, NL, NLP, 1, TOPK, False)
    n_tiles = tl.sum((c + BM - 1) // BM)
    if kg == 0:
        tl.store(tile_done_ptr + tile, 0)  # every tile slot, real or not: no count left from the last call
        if tile == 0:
            tl.store(n_tiles_ptr, n_tiles)
            tl.store(claims_ptr + tl.arange(0, 8), tl.zeros([8], tl.int32))
    if tile < n_tiles:
        e, rmask, rid = tile_rows(tile, c, None, lists_ptr, T, BM, NLP, 1, TOPK, False)
        tok = rid // TOPK
        p = tile * BM + tl.arange(0, BM)
        if kg == 0:
            tl.store(rid_ptr + p, tl.where(rmask, rid, -1))
            tl.store(tile_expert_ptr + tile, e)
        if COPY_ROWS:  # else GEMM1 gathers the rows itself
            kk = tl.arange(0, BK)
            for i in tl.static_range(KB_PER_PROGRAM):
                kb = kg * KB_PER_PROGRAM + i
                x = tl.load(hs_ptr + tok.to(tl.int64)[:, None] * H + kb * BK + kk[None, :], mask=rmask[:, None],
                            other=0.0)  # fmt: skip
                tl.store(a_ptr + p.to(tl.int64)[:, None] * H + kb * BK + kk[None, :], x)
                s = tl.load(hss_ptr + kb * T + tok, mask=rmask, other=0.0)
                tl.store(sa_ptr + kb * MP + p, s)


def launch_for(ws) -> Kernel:
    """The permute launch of large-T workspace `ws` (`large_t.Workspace`): with `ws.gather_rows` (GEMM1
    gathers the rows itself) only the row ids, tiles and counters, one program a tile."""
    nkb = ws.H // 128
    kbp = max(d for d in (8, 7, 4, 2, 1) if nkb % d == 0)
    return Kernel(
        permute_kernel, (ws.perm_max_tiles, 1 if ws.gather_rows else nkb // kbp),
        dict(MP=ws.perm_max_tiles * BM, NL=ws.NL, NLP=ws.NLP, H=ws.H, TOPK=ws.TOPK, BM=BM, KB_PER_PROGRAM=kbp,
             COPY_ROWS=not ws.gather_rows),
        num_warps=4,
    )  # fmt: skip
