"""GEMM1's tile inside Triton kernels: shared by the Triton rungs that run GEMM1 on FP8 tensor cores.

`w1_tile` computes the up and gate tiles of G1 = X[rows] @ W1[e]^T for one 128-column block of I over a
range of 128-wide K blocks: one fp8 dot per K block, whose block scales (the rows' activation scale times
the weight block's scale) are applied to the fp32 partial sum, since the tensor core must not
accumulate across K blocks with different scales. SWAP (M tiles under 64 rows): the weight rows are
the MMA's M side and the rows its N side, so the tiles are G1^T ([128, BM]); else [BM, 128].

`item_tile_major` numbers GEMM1's (M tile, column block, K split) work items tile by tile.

`park_partials` is the hand-off of a column block computed in parts (split-K, or rung 4's stream-K):
each part parks its fp32 partials and takes a ticket; the last to arrive sums them in part order
(deterministic) and resets the ticket for the next call.
"""

import triton
import triton.language as tl


@triton.jit
def w1_tile(e, jb, tok, rmask, kb0, hs_ptr, hss_ptr, w1_ptr, w1s_ptr, T, H: tl.constexpr, I: tl.constexpr,
            BM: tl.constexpr, KPS, SWAP: tl.constexpr, SPF: tl.constexpr, KU: tl.constexpr,
            STACK: tl.constexpr = False):  # fmt: skip
    """(up, gate) fp32 tiles of column block jb of local expert e for the token rows `tok` (where rmask),
    over K blocks kb0 .. kb0 + KPS - 1, KU blocks per pipeline iteration (their tiles load together).
    KPS is a constexpr for a fixed split, or a runtime count (rung 4's stream-K shares; then KU = 1).
    SPF: the next K block's scales are loaded one block ahead (off each iteration's critical path).
    STACK (with SWAP): the up and gate rows as one [2 BJ, BK] weight tile, one dot a K block instead of
    two (the same products and sums; row r and r + BJ of the MMA's accumulator are in one thread, so the
    split at the end moves no data)."""
    BK: tl.constexpr = 128
    BJ: tl.constexpr = 128
    NKB: tl.constexpr = H // BK
    NJ: tl.constexpr = I // BJ
    kk = tl.arange(0, BK)
    jn = tl.arange(0, BJ)
    e64 = e.to(tl.int64)
    su_ptr = w1s_ptr + (e * (2 * NJ) + jb) * NKB
    sg_ptr = w1s_ptr + (e * (2 * NJ) + NJ + jb) * NKB
    if SWAP:
        wu_ptrs = w1_ptr + e64 * (2 * I * H) + (jb * BJ + jn)[:, None] * H + kk[None, :]  # [BJ, BK]
        a_ptrs = hs_ptr + tok.to(tl.int64)[None, :] * H + kk[:, None]  # [BK, BM], K contiguous
        amask = rmask[None, :]
        acc_u = tl.zeros((BJ, BM), tl.float32)
        acc_g = tl.zeros((BJ, BM), tl.float32)
    else:
        wu_ptrs = w1_ptr + e64 * (2 * I * H) + (jb * BJ + jn)[None, :] * H + kk[:, None]  # [BK, BJ]
        a_ptrs = hs_ptr + tok.to(tl.int64)[:, None] * H + kk[None, :]  # [BM, BK]
        amask = rmask[:, None]
        acc_u = tl.zeros((BM, BJ), tl.float32)
        acc_g = tl.zeros((BM, BJ), tl.float32)
    wg_ptrs = wu_ptrs + I * H  # the gate rows: the second half of W1's rows
    if STACK:
        j2 = tl.arange(0, 2 * BJ)  # rows BJ.. of the tile: the gate rows, I rows further into W1
        wug_ptrs = w1_ptr + e64 * (2 * I * H) + (jb * BJ + j2 + (j2 >= BJ) * (I - BJ))[:, None] * H + kk[None, :]
        acc = tl.zeros((2 * BJ, BM), tl.float32)
    asc_n = tl.load(hss_ptr + kb0 * T + tok)
    su_n = tl.load(su_ptr + kb0)
    sg_n = tl.load(sg_ptr + kb0)
    for ki in range(0, KPS // KU):
        for u in tl.static_range(KU):
            kb = kb0 + ki * KU + u
            if SPF:
                asc = asc_n
                su = su_n
                sg = sg_n
                kn = tl.minimum(kb + 1, NKB - 1)
                asc_n = tl.load(hss_ptr + kn * T + tok)
                su_n = tl.load(su_ptr + kn)
                sg_n = tl.load(sg_ptr + kn)
            else:
                asc = tl.load(hss_ptr + kb * T + tok)
                su = tl.load(su_ptr + kb)
                sg = tl.load(sg_ptr + kb)
            a = tl.load(a_ptrs + kb * BK, mask=amask, other=0.0)
            if STACK:
                w = tl.load(wug_ptrs + kb * BK)
                srow = tl.where(j2 < BJ, su, sg)
                acc += tl.dot(w, a) * (asc[None, :] * srow[:, None])
            elif SWAP:
                wu = tl.load(wu_ptrs + kb * BK)
                wg = tl.load(wg_ptrs + kb * BK)
                acc_u += tl.dot(wu, a) * (asc * su)[None, :]
                acc_g += tl.dot(wg, a) * (asc * sg)[None, :]
            else:
                wu = tl.load(wu_ptrs + kb * BK)
                wg = tl.load(wg_ptrs + kb * BK)
                acc_u += tl.dot(a, wu) * (asc * su)[:, None]
                acc_g += tl.dot(a, wg) * (asc * sg)[:, None]
    if STACK:
        acc_u, acc_g = tl.split(tl.permute(tl.reshape(acc, (2, BJ, BM)), (1, 2, 0)))
    return acc_u, acc_g


@triton.jit
def item_tile_major(item, split, NJ: tl.constexpr):
    """(tile, column block jb, K split sk) of GEMM1 work item `item`, the items numbered tile by tile: the
    splits of a column block next to each other, then the column blocks of a tile, then the tiles. `split`
    may be a runtime value (rung 4's `split_k_fill`)."""
    sk = item % split
    r = item // split
    jb = r % NJ
    tile = r // NJ
    return tile, jb, sk


@triton.jit
def park_partials(acc_u, acc_g, part_ptr, ticket_ptr, tj, slot0, j, n, BM: tl.constexpr, SWAP: tl.constexpr):
    """Column block tj of a tile gets its K blocks in n parts (split-K's splits, rung 4's stream-K shares);
    this is part j. Park its partials in slot slot0 + j and take a ticket; returns (last, up, gate): last
    is true for the part that arrived last, with up and gate the sums over all n parts in part order
    (deterministic; zeros otherwise). Plain loads after the ticket's acquire: each partial is written once
    per call. n is a constexpr (split-K) or a runtime count (stream-K)."""
    BJ: tl.constexpr = 128
    jn = tl.arange(0, BJ)
    if SWAP:
        el = jn[:, None] * BM + tl.arange(0, BM)[None, :]
    else:
        el = tl.arange(0, BM)[:, None] * BJ + jn[None, :]
    pbase = part_ptr + slot0.to(tl.int64) * (2 * BJ * BM)
    tl.store(pbase + j * (2 * BJ * BM) + el, acc_u)
    tl.store(pbase + j * (2 * BJ * BM) + BJ * BM + el, acc_g)
    tl.debug_barrier()
    ticket = tl.atomic_add(ticket_ptr + tj, 1, sem="acq_rel")
    tl.debug_barrier()
    last = ticket == n - 1
    up = tl.zeros(acc_u.shape, tl.float32)
    gate = tl.zeros(acc_g.shape, tl.float32)
    if last:
        for i in range(0, n):
            up += tl.load(pbase + i * (2 * BJ * BM) + el)
            gate += tl.load(pbase + i * (2 * BJ * BM) + BJ * BM + el)
        tl.store(ticket_ptr + tj, 0)  # ready for the next call
    return last, up, gate
