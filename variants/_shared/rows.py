"""Rows of an expert-sorted grouped GEMM, inside Triton kernels: shared by the Triton rungs.

A "row" is a (token, slot) pair, identified as token * TOPK + slot (slot: the position of the expert
among the token's TOPK selected ones). The rows of each local expert form ceil(count / BM) M tiles,
numbered expert by expert. Two sources of the rows: INLINE (small T) derives them inside the kernel
from the [T, TOPK] expert ids (a histogram for the counts, a cumsum for the ranks); otherwise a sort
kernel has written each expert's count and its rows in token order (`lists[e * T + rank]`).
"""

import triton
import triton.language as tl


@triton.jit
def local_ids(ids_ptr, T, local_off, TP: tl.constexpr, TOPK: tl.constexpr):
    """[TP, TOPK] local expert index of every (token, slot); out of range where not local."""
    t = tl.arange(0, TP)
    k = tl.arange(0, TOPK)
    return tl.load(ids_ptr + t[:, None] * TOPK + k[None, :], mask=(t < T)[:, None], other=-1) - local_off


@triton.jit
def expert_counts(loc, counts_ptr, NL: tl.constexpr, NLP: tl.constexpr, TP: tl.constexpr, TOPK: tl.constexpr,
                  INLINE: tl.constexpr):  # fmt: skip
    """Rows per local expert ([NLP]); inline: a histogram of the [TP, TOPK] local ids `loc`, else the
    sort's counts."""
    if INLINE:
        ok = (loc >= 0) & (loc < NL)
        c = tl.histogram(tl.reshape(tl.where(ok, loc, 0), (TP * TOPK,)), NLP, mask=tl.reshape(ok, (TP * TOPK,)))
    else:
        ex = tl.arange(0, NLP)
        c = tl.load(counts_ptr + ex, mask=ex < NL, other=0)
    return c


@triton.jit
def hit_tiles(loc, counts_ptr, NL: tl.constexpr, NLP: tl.constexpr, TP: tl.constexpr, TOPK: tl.constexpr,
              BM: tl.constexpr, INLINE: tl.constexpr):  # fmt: skip
    """(rows per local expert [NLP], how many M tiles of BM rows the experts that were hit make): the
    work a GEMM schedules, numbered expert by expert (`tile_expert`, `tile_rows`)."""
    c = expert_counts(loc, counts_ptr, NL, NLP, TP, TOPK, INLINE)
    return c, tl.sum((c + BM - 1) // BM)


@triton.jit
def tile_expert(tile, c, BM: tl.constexpr):
    """Local expert of M tile `tile` (tiles are numbered expert by expert)."""
    cum = tl.cumsum((c + BM - 1) // BM, axis=0)
    return tl.sum((cum <= tile).to(tl.int32))


@triton.jit
def tile_rows(tile, c, loc, lists_ptr, T, BM: tl.constexpr, NLP: tl.constexpr, TP: tl.constexpr,
              TOPK: tl.constexpr, INLINE: tl.constexpr):  # fmt: skip
    """Expert, row mask and row ids (token * TOPK + slot, in token order) of M tile `tile`. Rows past
    the tile's count get row id 0 (a valid address; their tiles are masked)."""
    ex = tl.arange(0, NLP)
    ntile = (c + BM - 1) // BM
    cum = tl.cumsum(ntile, axis=0)
    e = tl.sum((cum <= tile).to(tl.int32))
    sel = ex == e
    cnt = tl.sum(tl.where(sel, c, 0))
    m0 = (tile - tl.sum(tl.where(sel, cum - ntile, 0))) * BM
    rows = m0 + tl.arange(0, BM)
    rmask = rows < cnt
    if INLINE:
        k = tl.arange(0, TOPK)
        hit_k = loc == e
        hit = tl.max(hit_k.to(tl.int32), axis=1)  # a token selects an expert at most once
        slot = tl.sum(tl.where(hit_k, k[None, :], 0), axis=1)
        rank = tl.cumsum(hit, axis=0) - 1
        t = tl.arange(0, TP)
        pick = (rank[None, :] == rows[:, None]) & (hit[None, :] > 0)  # [BM, TP]
        rid = tl.sum(tl.where(pick, (t * TOPK + slot)[None, :], 0), axis=1)
    else:
        rid = tl.load(lists_ptr + e * T + rows, mask=rmask, other=0)
    return e, rmask, rid


@triton.jit
def expert_rows(e, ids_ptr, counts_ptr, lists_ptr, T, local_off, TOPK: tl.constexpr, BC: tl.constexpr,
                NCHUNK: tl.constexpr):  # fmt: skip
    """The sort of local expert e: its rows (token * TOPK + slot) in token order at lists[e * T + rank],
    and their count at counts[e]. NCHUNK = cdiv(T, BC) (a constexpr: T is fixed per workspace)."""
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


def max_tiles(T: int, n_local: int, bm: int, top_k: int = 8) -> int:
    """Worst-case number of M tiles over all local experts: sum_e ceil(c_e / bm) where
    sum_e c_e <= T * min(top_k, n_local), c_e <= T, and at most min(n_local, rows) experts are hit."""
    rows = T * min(top_k, n_local)
    hit = min(n_local, rows)
    return max(1, min(n_local * triton.cdiv(T, bm), (rows + hit * (bm - 1)) // bm))
