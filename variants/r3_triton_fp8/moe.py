"""Rung 3: Triton MoE on FP8 tensor cores (tl.dot on float8e4nv operands, fp32 accumulation).

A call is three launches at T <= 8, four up to T = 128 and five above, the same set on every call of
a workload, none waiting on the host; GEMM1 (after the routing kernel), GEMM2 and the finalize are
launched with programmatic dependent launch (PDL: each waits in-kernel, `griddepcontrol.wait`, for the
previous kernel, and GEMM2's programs start in the SM slots that GEMM1's finished programs free):

1. `_route_kernel`  (T > 8) sigmoid (bit-identical to torch.sigmoid on CUDA: precise expf, IEEE
                    division), bias, group top-2 sums, top-4 groups, top-8 experts (ties to the lower
                    index, as the reference), weights; writes the exact zero rows of tokens with no
                    local expert. At T <= 8 every GEMM1 program runs the same routing itself (no launch).
2. `_sort_kernel`   large T only: one program per local expert, its row count and its rows in token
                    order. At small T each GEMM program derives the same rows from the [T, 8] expert
                    ids itself (a histogram for the counts, a cumsum for the ranks), so no launch.
   A "row" is a (token, slot) pair, identified as token * 8 + slot everywhere (C, its scales, the
   routing weight and the rows of tokens with several local experts all live at that index).
3. `_gemm1_kernel`  persistent over (M tile, 128 columns of I, K split). G1 = X[rows] @ W1[e]^T with
                    the token rows gathered inside the kernel, one fp8 dot per 128-wide K block whose
                    block scales are applied to the fp32 partial sum (the next block's scales loaded one
                    iteration ahead); the gate and up tiles of the same 128 columns in one program;
                    epilogue SwiGLU (silu on the SECOND half) and FP8 re-quantization of C as a hi/lo
                    pair of terms, each with one scale (amax / 448) per row per 128 columns: hi = fp8(C /
                    s_hi), lo = fp8((C - hi * s_hi) / s_lo) (rel-L2 error ~2e-3, hi alone ~2.3e-2).
                    T <= 128: swapped operands (the weight rows on the MMA's M side, BM = 16 tokens on
                    its N side); above, tokens on the M side
                    (BM 64, or 128 at large T). T <= 4: split-K; the last program of a tile (a ticket)
                    sums the partials in split order and runs the epilogue.
4. `_gemm2_kernel`  persistent over (M tile, H block). O = C @ W2[e]^T the same way (two fp8 dots per
                    K block on the same W2 tile, hi and lo, each partial with its own row scale), times
                    the routing weight. A token with one local expert gets its bf16 output row written here; for a
                    token with several, each row goes to a buffer at its (token, slot) index (fp32, or
                    bf16 above T = 128; REDUCE_MODE "atomic": fp32 atomics into one row per token).
5. `_finalize_kernel` tokens with several local experts: the fp32 sum of their rows in slot order
                    (deterministic), cast to bf16.

Grids: persistent, sized from the SM count and the compiled kernel's occupancy; the loop bound is the
worst case for T (a shape) and items past the real work (from the counts) are skipped.
Tile shapes come from a fixed table by T bucket and compute capability (no autotuning). See NOTES.md.
"""

import os
import time

import torch
import triton
import triton.language as tl

from .exact import INTERPRET, round_to_bf16
from .launch import BLOCK, Kernel, capability, gdc_launch_dependents, gdc_wait, next_pow2, prefetch_l2, sm_count
from .quant import swiglu_quant_store
from .routing import (
    N_GROUP,
    TOP_K,
    TOPK_GROUP,
    route,  # noqa: F401  (the harness measures routing agreement through it)
    route_kernel,
    route_tokens,
    use_libdevice,
    zero_rows,
    zero_sum_rows,
)
from .rows import expert_counts, local_ids, tile_expert, tile_rows

# "buffer": one fp32 row per (token, slot), summed per token in slot order (deterministic).
# "atomic": fp32 atomics into one row per token. Only tokens with >= 2 local experts use either.
REDUCE_MODE = os.environ.get("FIBMOE_R3_REDUCE", "buffer")

# Overrides of the T-bucket table (the device sweep uses them); see `_config`.
CONFIG_OVERRIDE: dict = {}

INLINE_MAX_T = 128  # up to this T the GEMMs derive their rows from the expert ids (no sort launch)


@triton.jit(do_not_specialize=["T", "local_off"])
def _sort_kernel(
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


@triton.jit(do_not_specialize=["T", "local_off"])
def _gemm1_kernel(
    logits_ptr,
    bias_ptr,
    wts_ptr,
    out_ptr,
    hs_ptr,
    hss_ptr,
    w1_ptr,
    w1s_ptr,
    ids_ptr,
    counts_ptr,
    lists_ptr,
    cq_ptr,
    cs_ptr,
    part_ptr,
    ticket_ptr,
    obuf_ptr,
    T,
    local_off,
    rsf,
    E: tl.constexpr,
    NG: tl.constexpr,
    KG: tl.constexpr,
    NL: tl.constexpr,
    NLP: tl.constexpr,
    H: tl.constexpr,
    I: tl.constexpr,
    TP: tl.constexpr,
    TOPK: tl.constexpr,
    BM: tl.constexpr,
    SPLIT_K: tl.constexpr,
    ITERS: tl.constexpr,
    TILE_FAST: tl.constexpr,
    INLINE: tl.constexpr,
    EXACT: tl.constexpr,
    SWAP: tl.constexpr,
    SPF: tl.constexpr,
    PDL: tl.constexpr,
    TRIGGER: tl.constexpr,
    FUSE_ROUTE: tl.constexpr,
    USE_LIBDEVICE: tl.constexpr,
    ZERO_SCRATCH: tl.constexpr,
    KU: tl.constexpr,
    NT: tl.constexpr,
):
    """G1 = X[rows] @ W1[e]^T for (M tile, 128 columns of I, K split) items; SwiGLU + FP8 epilogue.
    SWAP (small T): the 2 x 128 weight rows are the MMA's M side and the BM tokens its N side (the
    accumulators are G1^T tiles); else the tokens are the M side (per-row token scales, BM = 128).
    FUSE_ROUTE (tiny T, inline rows): every program routes all T tokens itself (no routing launch);
    program 0 stores the expert ids and weights for GEMM2, program t % nprog token t's zero row.
    PDL: launched with programmatic dependent launch (waits for the routing / sort kernel); TRIGGER:
    lets GEMM2 (launched with PDL) start in the SM slots of this kernel's finished programs."""
    BK: tl.constexpr = 128
    BJ: tl.constexpr = 128
    NKB: tl.constexpr = H // BK
    NJ: tl.constexpr = I // BJ
    KPS: tl.constexpr = NKB // SPLIT_K  # K blocks per split (SPLIT_K divides NKB)
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    if FUSE_ROUTE:
        t = tl.arange(0, TP)
        tmask = t < T
        gids, gw = route_tokens(logits_ptr, bias_ptr, t, tmask, rsf, E, NG, KG, TOPK, TP, USE_LIBDEVICE)
        loc = tl.where(tmask[:, None], gids - local_off, -1)
        out_off = t[:, None] * TOPK + tl.arange(0, TOPK)[None, :]
        first = pid == 0
        tl.store(ids_ptr + out_off, gids, mask=tmask[:, None] & first)
        tl.store(wts_ptr + out_off, gw, mask=tmask[:, None] & first)
        zmask = tmask & (t % nprog == pid)
        zero_rows(gids, t, zmask, out_ptr, local_off, NL, H, TP)
        if ZERO_SCRATCH:
            zero_sum_rows(gids, t, zmask, obuf_ptr, local_off, NL, H, TP)
        gdc_launch_dependents(TRIGGER)
    else:
        gdc_wait(PDL)  # the routing (and sort) results
        gdc_launch_dependents(TRIGGER)  # GEMM2's CTAs may take the SM slots of finished programs
        if INLINE:
            loc = local_ids(ids_ptr, T, local_off, TP, TOPK)
        else:
            loc = None
    c = expert_counts(loc, counts_ptr, NL, NLP, TP, TOPK, INLINE)
    n_tiles = tl.sum((c + BM - 1) // BM)
    n_items = n_tiles * (NJ * SPLIT_K)
    kk = tl.arange(0, BK)
    jn = tl.arange(0, BJ)
    for it in range(0, ITERS):
        item = pid + it * nprog
        if item < n_items:
            if TILE_FAST:  # consecutive programs: tiles of one (column block, split)
                tile = item % n_tiles
                r = item // n_tiles
                sk = r % SPLIT_K
                jb = r // SPLIT_K
            else:  # consecutive programs: splits, then column blocks, of one tile
                sk = item % SPLIT_K
                r = item // SPLIT_K
                jb = r % NJ
                tile = r // NJ
            tj = tile * NJ + jb
            e, rmask, rid = tile_rows(tile, c, loc, lists_ptr, T, BM, NLP, TP, TOPK, INLINE)
            tok = rid // TOPK  # rows past the tile's count have rid 0: valid addresses, masked tiles
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
            wg_ptrs = wu_ptrs + I * H
            kb0 = sk * KPS
            # SPF: the block scales of the next K block are loaded one iteration ahead, so that their
            # latency is off each iteration's critical path (the tiles themselves are pipelined)
            asc_n = tl.load(hss_ptr + kb0 * T + tok)
            su_n = tl.load(su_ptr + kb0)
            sg_n = tl.load(sg_ptr + kb0)
            for ki in range(0, KPS // KU):  # KU K blocks per iteration: their tiles load together
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
                    wu = tl.load(wu_ptrs + kb * BK)
                    wg = tl.load(wg_ptrs + kb * BK)
                    # one fp8 dot per 128-wide K block; its block scales applied to the fp32 partial sum
                    if SWAP:
                        acc_u += tl.dot(wu, a) * (asc * su)[None, :]
                        acc_g += tl.dot(wg, a) * (asc * sg)[None, :]
                    else:
                        acc_u += tl.dot(a, wu) * (asc * su)[:, None]
                        acc_g += tl.dot(a, wg) * (asc * sg)[:, None]
            if SPLIT_K == 1:
                swiglu_quant_store(acc_u, acc_g, rid, rmask, jb, cq_ptr, cs_ptr, I, BJ, EXACT, SWAP, NT)
            else:
                # split-K: park the fp32 partials; the last program of the tile sums them in split order
                if SWAP:
                    el = jn[:, None] * BM + tl.arange(0, BM)[None, :]
                else:
                    el = tl.arange(0, BM)[:, None] * BJ + jn[None, :]
                pbase = part_ptr + (tj * SPLIT_K).to(tl.int64) * (2 * BJ * BM)
                tl.store(pbase + sk * (2 * BJ * BM) + el, acc_u)
                tl.store(pbase + sk * (2 * BJ * BM) + BJ * BM + el, acc_g)
                tl.debug_barrier()
                ticket = tl.atomic_add(ticket_ptr + tj, 1, sem="acq_rel")
                tl.debug_barrier()
                if ticket == SPLIT_K - 1:
                    up = tl.zeros(acc_u.shape, tl.float32)
                    gate = tl.zeros(acc_g.shape, tl.float32)
                    for s in tl.static_range(SPLIT_K):
                        up += tl.load(pbase + s * (2 * BJ * BM) + el, cache_modifier=".cg")
                        gate += tl.load(pbase + s * (2 * BJ * BM) + BJ * BM + el, cache_modifier=".cg")
                    tl.store(ticket_ptr + tj, 0)  # ready for the next call
                    swiglu_quant_store(up, gate, rid, rmask, jb, cq_ptr, cs_ptr, I, BJ, EXACT, SWAP, NT)


@triton.jit(do_not_specialize=["T", "local_off"])
def _gemm2_kernel(
    cq_ptr,
    cs_ptr,
    w2_ptr,
    w2s_ptr,
    ids_ptr,
    w_ptr,
    counts_ptr,
    lists_ptr,
    out_ptr,
    obuf_ptr,
    T,
    local_off,
    NL: tl.constexpr,
    NLP: tl.constexpr,
    H: tl.constexpr,
    I: tl.constexpr,
    TP: tl.constexpr,
    TOPK: tl.constexpr,
    BM: tl.constexpr,
    BH: tl.constexpr,
    ITERS: tl.constexpr,
    TILE_FAST: tl.constexpr,
    INLINE: tl.constexpr,
    ATOMIC: tl.constexpr,
    EXACT: tl.constexpr,
    SWAP: tl.constexpr,
    SPF: tl.constexpr,
    PDL: tl.constexpr,
    PF_LINES: tl.constexpr,
    OBUF_BF16: tl.constexpr,
    IDS_LATE: tl.constexpr,
    KU: tl.constexpr,
    NT: tl.constexpr,
):
    """O = C[rows] @ W2[e]^T for (M tile, H block) items, times the routing weight; single-expert
    tokens' bf16 rows written here, the others parked for `_finalize_kernel`. SWAP as in GEMM1.
    PDL: launched while GEMM1 runs; before waiting for it, a program asks the L2 for the first
    PF_LINES x 128 bytes of each W2 row of its first item (weights do not depend on GEMM1).
    IDS_LATE: the expert ids come from GEMM1 itself (fused routing): read only after the wait.
    NT = 2: C is a hi/lo pair of fp8 terms (see `swiglu_quant_store`): two dots per K block on the
    same W2 tile, each fp32 partial with its own row scale: acc += dot_hi * (s_hi * w_scale), then
    acc += dot_lo * (s_lo * w_scale)."""
    BK: tl.constexpr = 128
    NKB: tl.constexpr = I // BK
    NHB: tl.constexpr = H // BH
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    # the expert ids / counts / lists were complete before GEMM1 (which waited for them) let this
    # kernel launch, so (unless GEMM1 routed) the schedule is computed before waiting for GEMM1's C
    if IDS_LATE:
        gdc_wait(PDL)
    if INLINE:
        loc = local_ids(ids_ptr, T, local_off, TP, TOPK)
    else:
        loc = None
    c = expert_counts(loc, counts_ptr, NL, NLP, TP, TOPK, INLINE)
    n_tiles = tl.sum((c + BM - 1) // BM)
    n_items = n_tiles * NHB
    kk = tl.arange(0, BK)
    hn = tl.arange(0, BH)
    k8 = tl.arange(0, TOPK)
    if PF_LINES > 0:
        if pid < n_items:
            if TILE_FAST:
                tile0 = pid % n_tiles
                hb0 = pid // n_tiles
            else:
                hb0 = pid % NHB
                tile0 = pid // NHB
            e0 = tile_expert(tile0, c, BM)
            lines = tl.arange(0, PF_LINES) * 128
            pf = w2_ptr + e0.to(tl.int64) * (H * I) + (hb0 * BH + hn)[:, None] * I + lines[None, :]
            prefetch_l2(pf)
    if not IDS_LATE:
        gdc_wait(PDL)  # GEMM1's C and its scales
    gdc_launch_dependents(PDL)
    for it in range(0, ITERS):
        item = pid + it * nprog
        if item < n_items:
            if TILE_FAST:  # consecutive programs: tiles of one H block (large T: W2 block shared in L2)
                tile = item % n_tiles
                hb = item // n_tiles
            else:  # consecutive programs: H blocks of one tile (C rows shared in L2)
                hb = item % NHB
                tile = item // NHB
            e, rmask, rid = tile_rows(tile, c, loc, lists_ptr, T, BM, NLP, TP, TOPK, INLINE)
            tok = rid // TOPK
            h = hb * BH + hn
            ws_ptr = w2s_ptr + (e * (H // 128) + (hb * BH) // 128) * NKB
            if SWAP:
                w_ptrs = w2_ptr + e.to(tl.int64) * (H * I) + h[:, None] * I + kk[None, :]  # [BH, BK]
                a_ptrs = cq_ptr + rid.to(tl.int64)[None, :] * (NT * I) + kk[:, None]  # [BK, BM]
                amask = rmask[None, :]
                acc = tl.zeros((BH, BM), tl.float32)
            else:
                w_ptrs = w2_ptr + e.to(tl.int64) * (H * I) + h[None, :] * I + kk[:, None]  # [BK, BH]
                a_ptrs = cq_ptr + rid.to(tl.int64)[:, None] * (NT * I) + kk[None, :]  # [BM, BK]
                amask = rmask[:, None]
                acc = tl.zeros((BM, BH), tl.float32)
            s_ptrs = cs_ptr + rid * (NT * NKB)  # scales of row rid: [NKB, NT]
            asc_n = tl.load(s_ptrs)
            if NT == 2:
                asl_n = tl.load(s_ptrs + 1)
            wsc_n = tl.load(ws_ptr)
            for ki in range(0, NKB // KU):  # KU K blocks per iteration: their tiles load together
                for u in tl.static_range(KU):
                    kb = ki * KU + u
                    if SPF:
                        asc = asc_n
                        wsc = wsc_n
                        kn = tl.minimum(kb + 1, NKB - 1)
                        asc_n = tl.load(s_ptrs + kn * NT)
                        if NT == 2:
                            asl = asl_n
                            asl_n = tl.load(s_ptrs + kn * NT + 1)
                        wsc_n = tl.load(ws_ptr + kn)
                    else:
                        asc = tl.load(s_ptrs + kb * NT)
                        if NT == 2:
                            asl = tl.load(s_ptrs + kb * NT + 1)
                        wsc = tl.load(ws_ptr + kb)
                    w = tl.load(w_ptrs + kb * BK)
                    a = tl.load(a_ptrs + kb * (NT * BK), mask=amask, other=0.0)
                    if SWAP:
                        acc += tl.dot(w, a) * (asc * wsc)[None, :]
                    else:
                        acc += tl.dot(a, w) * (asc * wsc)[:, None]
                    if NT == 2:  # the lo term: a second dot on the same W2 tile
                        al = tl.load(a_ptrs + kb * (NT * BK) + BK, mask=amask, other=0.0)
                        if SWAP:
                            acc += tl.dot(w, al) * (asl * wsc)[None, :]
                        else:
                            acc += tl.dot(al, w) * (asl * wsc)[:, None]
            wrow = tl.load(w_ptr + rid, mask=rmask, other=0.0)
            lt = tl.load(ids_ptr + tok[:, None] * TOPK + k8[None, :], mask=rmask[:, None], other=-1) - local_off
            nloc = tl.sum(((lt >= 0) & (lt < NL)).to(tl.int32), axis=1)
            single = rmask & (nloc == 1)
            multi = rmask & (nloc > 1)
            tok64 = tok.to(tl.int64)
            rid64 = rid.to(tl.int64)
            if SWAP:
                acc = acc * wrow[None, :]
                o_offs = tok64[None, :] * H + h[:, None]
                b_offs = rid64[None, :] * H + h[:, None]
                a_offs = o_offs
                smask = single[None, :]
                mmask = multi[None, :]
                amask2 = multi[None, :] & (hn >= 0)[:, None]
            else:
                acc = acc * wrow[:, None]
                o_offs = tok64[:, None] * H + h[None, :]
                b_offs = rid64[:, None] * H + h[None, :]
                a_offs = o_offs
                smask = single[:, None]
                mmask = multi[:, None]
                amask2 = multi[:, None] & (hn >= 0)[None, :]
            # a token with exactly one local expert: its output row is this row, written once
            val = acc
            if EXACT:
                val = round_to_bf16(val)
            tl.store(out_ptr + o_offs, val.to(tl.bfloat16), mask=smask)
            # several local experts: park the row; `_finalize_kernel` sums the token's rows
            if ATOMIC:
                tl.atomic_add(obuf_ptr + a_offs, acc, mask=amask2, sem="relaxed")
            elif OBUF_BF16:
                tl.store(obuf_ptr.to(tl.pointer_type(tl.bfloat16)) + b_offs, val.to(tl.bfloat16), mask=mmask)
            else:
                tl.store(obuf_ptr + b_offs, acc, mask=mmask)


@triton.jit(do_not_specialize=["T", "local_off"])
def _finalize_kernel(
    ids_ptr,
    obuf_ptr,
    out_ptr,
    T,
    local_off,
    NL: tl.constexpr,
    H: tl.constexpr,
    TOPK: tl.constexpr,
    BT: tl.constexpr,
    BH: tl.constexpr,
    ATOMIC: tl.constexpr,
    EXACT: tl.constexpr,
    PDL: tl.constexpr,
    OBUF_BF16: tl.constexpr,
):
    """Output rows of tokens with several local experts: the sum of their rows in fp32, in slot
    order (atomic: their fp32 row), cast to bf16. Every other token's row is written already."""
    gdc_wait(PDL)  # GEMM2's rows
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    h = tl.program_id(1) * BH + tl.arange(0, BH)
    tm = t < T
    hm = h < H
    k8 = tl.arange(0, TOPK)
    loc = tl.load(ids_ptr + t[:, None] * TOPK + k8[None, :], mask=tm[:, None], other=-1) - local_off
    nloc = tl.sum(((loc >= 0) & (loc < NL)).to(tl.int32), axis=1)
    need = tm & (nloc > 1)
    if tl.max(need.to(tl.int32)) > 0:
        t64 = t.to(tl.int64)
        if ATOMIC:
            acc = tl.load(obuf_ptr + t64[:, None] * H + h[None, :], mask=need[:, None] & hm[None, :], other=0.0)
        else:
            acc = tl.zeros((BT, BH), tl.float32)
            for k in tl.static_range(TOPK):
                lk = tl.load(ids_ptr + t * TOPK + k, mask=need, other=-1) - local_off
                use = need & (lk >= 0) & (lk < NL)
                offs = (t64 * TOPK + k)[:, None] * H + h[None, :]
                m2 = use[:, None] & hm[None, :]
                if OBUF_BF16:
                    acc += tl.load(obuf_ptr.to(tl.pointer_type(tl.bfloat16)) + offs, mask=m2, other=0.0).to(tl.float32)
                else:
                    acc += tl.load(obuf_ptr + offs, mask=m2, other=0.0)
        if EXACT:
            acc = round_to_bf16(acc)
        tl.store(out_ptr + t64[:, None] * H + h[None, :], acc.to(tl.bfloat16), mask=need[:, None] & hm[None, :])


# ----------------------------------------------------------------------------------------------
# host side
# ----------------------------------------------------------------------------------------------


def _config(T: int, cap: int = 90) -> dict:
    """Fixed tile shapes by T bucket (no autotuning). bm: M tile (tokens), s1: split-K of GEMM1
    (small T: few experts are active, so their weights are split over more programs), bh: H block of
    GEMM2, w/st: warps and pipeline stages, tf: item order (tiles fastest or not), sw: swapped
    operands (weights on the MMA's M side; small T), spf: scale prefetch, ku: K blocks per pipeline
    iteration (their tiles are requested together: longer runs per weight row), pdl: programmatic dependent
    launch of GEMM1 / GEMM2 / finalize, pf: 128-byte lines per W2 row that GEMM2 asks the L2 for
    before waiting on GEMM1 (pdl only), obf: bf16 rows for the reduction, fr: routing fused into
    GEMM1 (inline rows only), hl: C as a hi/lo pair of fp8 terms (False: hi alone, as up to v6)."""
    if T <= 4:
        c = dict(bm1=16, s1=2, w1=4, st1=3, bm2=16, bh=64, w2=4, st2=4, pf=0)
    elif T <= 128:
        c = dict(bm1=16, s1=1, w1=4, st1=3, bm2=16, bh=128, w2=4, st2=4, pf=4)
    elif T <= 2048:
        c = dict(bm1=64, s1=1, w1=8, st1=3, bm2=64, bh=128, w2=8, st2=3, pf=0)
    else:  # GEMM1 at BM 128 spills on sm_100 (its accumulators pass through registers there too)
        c = dict(bm1=128 if cap < 100 else 64, s1=1, w1=8, st1=3, bm2=128, bh=128, w2=8, st2=3, pf=0)
    small = T <= INLINE_MAX_T
    c["spf1"] = True
    c["spf2"] = not (16 < T <= INLINE_MAX_T)  # mid T: 175 instead of 162 registers cost GEMM2 a CTA per SM
    # two K blocks per GEMM1 iteration (1 CTA of 204 KB per SM): measured (v6, H100) -3.3% at T=56/80,
    # -3% at T=7; on sm_100 it spills 24-64 B (offline compile) and is unmeasured: one block there
    c["ku1"] = 2 if (cap < 100 and (4 < T <= 8 or 16 < T <= INLINE_MAX_T)) else 1
    c["ku2"] = 1
    c["pdl"] = True
    c["obf"] = T > INLINE_MAX_T  # measured: -7% at T=14107, -6% at T=11948 (v5), -6.4% at T=901 (v6)
    # C as a hi/lo pair of fp8 terms (two GEMM2 dots per K block on the same W2 tile; NOTES.md, v7):
    # rel-L2 error ~2e-3 instead of ~2.3e-2 (measured on the small definition, CPU interpreter)
    c["hl"] = True
    c["fr"] = T <= 8  # routing fused into GEMM1 (each program routes all T tokens; no routing launch)
    c["tf1"] = T > 2048  # GEMM1 at large T: tiles fastest (W1 blocks shared in L2); else splits/columns
    c["tf2"] = False  # GEMM2: H blocks fastest (the tile's C rows shared in L2)
    c["inline"] = small
    c["bt_route"] = 1 if small else 16
    c["w_route"] = 1 if small else 8
    c["bc_sort"] = min(1024, max(16, next_pow2(T)))
    c["bt_fin"] = 1 if small else 8
    c["bh_fin"] = 1024
    if CONFIG_OVERRIDE.get("hl", c["hl"]) and cap < 100:  # the hi/lo pair's extra C tile and dot (sm_90)
        if 4 < T <= INLINE_MAX_T:  # 4 stages of 20 KB would leave 2 CTAs per SM (v6: 3); 3 stages keep 3
            c["st2"] = 3
        elif T > 2048:  # BM 128 x BH 128 with the scale prefetch spills 16 B on sm_90 (255 regs)
            c["spf2"] = False
    c.update(CONFIG_OVERRIDE)
    # swapped operands only where the tokens cannot fill the MMA's M = 64
    c.setdefault("sw1", c["bm1"] < 64)
    c.setdefault("sw2", c["bm2"] < 64)
    if INTERPRET:  # no inline PTX in the interpreter; it runs the kernels one after the other anyway
        c["pdl"], c["pf"] = False, 0
    if not c["pdl"]:
        c["pf"] = 0
    if not c["inline"]:
        c["fr"] = False
    return c


def _max_tiles(T: int, n_local: int, bm: int) -> int:
    """Worst-case number of M tiles over all local experts: sum_e ceil(c_e / bm) where
    sum_e c_e <= T * min(8, n_local), c_e <= T, and at most min(n_local, rows) experts are hit."""
    rows = T * min(TOP_K, n_local)
    hit = min(n_local, rows)
    return max(1, min(n_local * triton.cdiv(T, bm), (rows + hit * (bm - 1)) // bm))


class _Workspace:
    """Scratch buffers and kernels for one (device, T, geometry), reused across calls. `cap` (compute
    capability x 10) only for offline compile checks on the "meta" device."""

    def __init__(self, device, T, E, NL, H, I, cap=None):
        c = _config(T, cap or capability(device))
        self.cfg = c
        self.T, self.E, self.w1_shape = T, E, torch.Size((NL, 2 * I, H))
        self.dev_index, self.get_stream = None, None
        self.atomic = REDUCE_MODE == "atomic"
        if H % BLOCK or I % BLOCK or E % N_GROUP:
            raise ValueError(f"unsupported geometry H={H} I={I} E={E}")
        while (H // BLOCK) % c["s1"]:  # split-K must divide the K blocks
            c["s1"] -= 1
        while (H // BLOCK // c["s1"]) % c["ku1"]:  # and so must the K blocks per iteration
            c["ku1"] -= 1
        while (I // BLOCK) % c["ku2"]:
            c["ku2"] -= 1
        if H % c["bh"] or (BLOCK % c["bh"] and c["bh"] % BLOCK):
            raise ValueError("bh must divide H and divide 128 or be a multiple of it")
        R = T * TOP_K
        i32 = dict(dtype=torch.int32, device=device)
        f32 = dict(dtype=torch.float32, device=device)
        self.ids = torch.empty(T, TOP_K, **i32)
        self.w = torch.empty(T, TOP_K, **f32)
        self.counts = torch.empty(NL, **i32)
        self.lists = torch.empty(1 if c["inline"] else NL * T, **i32)
        nt = 2 if c["hl"] else 1  # C as a hi/lo pair of fp8 terms (or hi alone)
        self.cq = torch.empty(R, nt * I, dtype=torch.float8_e4m3fn, device=device)
        self.cs = torch.empty(R, I // BLOCK, nt, **f32)
        self.obuf = torch.empty(T if self.atomic else R, H, **f32)
        nj, nhb, s1 = I // BLOCK, H // c["bh"], c["s1"]
        tiles1, tiles2 = _max_tiles(T, NL, c["bm1"]), _max_tiles(T, NL, c["bm2"])
        self.part = torch.empty(tiles1 * nj * s1 * 2 * BLOCK * c["bm1"] if s1 > 1 else 1, **f32)
        self.ticket = torch.zeros(tiles1 * nj if s1 > 1 else 1, **i32)
        sms = sm_count(device)
        items1, items2 = tiles1 * nj * s1, tiles2 * nhb
        TP = next_pow2(T) if c["inline"] else 1
        NLP = next_pow2(NL)
        libdev = use_libdevice(device)
        pdl = dict(launch_pdl=True) if c["pdl"] else {}
        self.fused_route = c["fr"]
        self.k_route = None
        if not self.fused_route:
            self.k_route = Kernel(
                route_kernel, (triton.cdiv(T, c["bt_route"]),),
                dict(E=E, NL=NL, H=H, NG=N_GROUP, KG=TOPK_GROUP, TOPK=TOP_K, BT=c["bt_route"],
                     USE_LIBDEVICE=libdev, WRITE_ZEROS=True, ZERO_SUMS=self.atomic),
                num_warps=c["w_route"],
            )  # fmt: skip
        self.k_sort = None
        if not c["inline"]:
            self.k_sort = Kernel(
                _sort_kernel,
                (NL,),
                dict(TOPK=TOP_K, BC=c["bc_sort"], NCHUNK=triton.cdiv(T, c["bc_sort"])),
                num_warps=4,
            )
        self.k_gemm1 = Kernel(
            _gemm1_kernel, (items1,),
            dict(E=E, NG=N_GROUP, KG=TOPK_GROUP, NL=NL, NLP=NLP, H=H, I=I, TP=TP, TOPK=TOP_K, BM=c["bm1"],
                 SPLIT_K=s1, ITERS=triton.cdiv(items1, min(items1, sms)), TILE_FAST=c["tf1"], INLINE=c["inline"],
                 EXACT=INTERPRET, SWAP=c["sw1"], SPF=c["spf1"], KU=c["ku1"], PDL=c["pdl"] and not self.fused_route,
                 TRIGGER=c["pdl"], FUSE_ROUTE=self.fused_route, USE_LIBDEVICE=libdev, ZERO_SCRATCH=self.atomic,
                 NT=nt),
            persistent_sms=sms, num_warps=c["w1"], num_stages=c["st1"], **({} if self.fused_route else pdl),
        )  # fmt: skip
        self.k_gemm2 = Kernel(
            _gemm2_kernel, (items2,),
            dict(NL=NL, NLP=NLP, H=H, I=I, TP=TP, TOPK=TOP_K, BM=c["bm2"], BH=c["bh"],
                 ITERS=triton.cdiv(items2, min(items2, sms)), TILE_FAST=c["tf2"], INLINE=c["inline"],
                 ATOMIC=self.atomic, EXACT=INTERPRET, SWAP=c["sw2"], SPF=c["spf2"], KU=c["ku2"], PDL=c["pdl"],
                 PF_LINES=c["pf"],
                 OBUF_BF16=c["obf"] and not self.atomic, IDS_LATE=self.fused_route, NT=nt),
            persistent_sms=sms, num_warps=c["w2"], num_stages=c["st2"], **pdl,
        )  # fmt: skip
        self.k_fin = Kernel(
            _finalize_kernel, (triton.cdiv(T, c["bt_fin"]), triton.cdiv(H, c["bh_fin"])),
            dict(NL=NL, H=H, TOPK=TOP_K, BT=c["bt_fin"], BH=c["bh_fin"], ATOMIC=self.atomic, EXACT=INTERPRET,
                 PDL=c["pdl"], OBUF_BF16=c["obf"] and not self.atomic),
            num_warps=4, **pdl,
        )  # fmt: skip
        self.kernels = [k for k in (self.k_route, self.k_sort, self.k_gemm1, self.k_gemm2, self.k_fin) if k]
        self.scratch_ptrs = None
        self.fast_ok = True

    def ready(self) -> bool:
        return all(k.ck is not None for k in self.kernels)


_WORKSPACES: dict = {}


def _workspace(device, T, E, NL, H, I) -> _Workspace:
    key = (device, T, E, NL, H, I)
    ws = _WORKSPACES.get(key)
    if ws is None:
        ws = _WORKSPACES[key] = _Workspace(device, T, E, NL, H, I)
    return ws


def reset_workspaces():
    """Forget cached scratch buffers and kernels (after changing REDUCE_MODE or CONFIG_OVERRIDE)."""
    _WORKSPACES.clear()
    _LAST[0] = None


# Host-side timestamps of the fast path, for the device profile only (None: off).
HOST_TIMING = None
_LAST: list = [None]  # the workspace of the last call, once its fast path is ready


def run(
    routing_logits,
    routing_bias,
    hidden_states,
    hidden_states_scale,
    gemm1_weights,
    gemm1_weights_scale,
    gemm2_weights,
    gemm2_weights_scale,
    local_expert_offset,
    routed_scaling_factor,
    output,
):
    ws = _LAST[0]  # the fast path: the same workload as the last call, kernels compiled, pointers aligned
    if (
        ws is not None
        and ws.T == routing_logits.shape[0]
        and ws.E == routing_logits.shape[1]
        and ws.w1_shape == gemm1_weights.shape
        and hidden_states.get_device() == ws.dev_index
    ):
        tm = HOST_TIMING
        if tm is not None:
            tm.append(("start", time.perf_counter()))
        p0, p1, p8 = routing_logits.data_ptr(), routing_bias.data_ptr(), output.data_ptr()
        if not ((p0 | p1 | p8) & 15):  # the compiled kernels assume 16-byte aligned pointers
            T = ws.T
            off = int(local_expert_offset)
            rsf = float(routed_scaling_factor)
            ids, w, counts, lists, cq, cs, part, ticket, obuf = ws.scratch_ptrs
            stream = ws.get_stream(ws.dev_index)
            try:
                if ws.k_route is not None:  # first, so that the GPU starts while the host goes on
                    ws.k_route.fast(stream, p0, p1, ids, w, p8, obuf, T, off, rsf)
                    if tm is not None:
                        tm.append(("route", time.perf_counter()))
                p2, p3 = hidden_states.data_ptr(), hidden_states_scale.data_ptr()
                p4, p5 = gemm1_weights.data_ptr(), gemm1_weights_scale.data_ptr()
                p6, p7 = gemm2_weights.data_ptr(), gemm2_weights_scale.data_ptr()
                if not ((p2 | p3 | p4 | p5 | p6 | p7) & 15):
                    if ws.k_sort is not None:
                        ws.k_sort.fast(stream, ids, counts, lists, T, off)
                    ws.k_gemm1.fast(
                        stream, p0, p1, w, p8, p2, p3, p4, p5, ids, counts, lists, cq, cs, part, ticket, obuf, T, off,
                        rsf,
                    )  # fmt: skip
                    if tm is not None:
                        tm.append(("gemm1", time.perf_counter()))
                    ws.k_gemm2.fast(stream, cq, cs, p6, p7, ids, w, counts, lists, p8, obuf, T, off)
                    ws.k_fin.fast(stream, ids, obuf, p8, T, off)
                    if tm is not None:
                        tm.append(("end", time.perf_counter()))
                    return output
                # a misaligned input (never from the harness): the dispatcher path below redoes the call
            except TypeError:  # a Triton whose launcher takes other arguments: the dispatcher from now on
                ws.fast_ok = False
                ws.scratch_ptrs = None
                _LAST[0] = None
    T, E = routing_logits.shape
    NL, N1, H = gemm1_weights.shape
    if T == 0:
        return output
    ws = _WORKSPACES.get((hidden_states.device, T, E, NL, H, N1 // 2))
    if ws is None:
        ws = _workspace(hidden_states.device, T, E, NL, H, N1 // 2)
    off = int(local_expert_offset)
    rsf = float(routed_scaling_factor)
    if ws.k_route is not None:
        ws.k_route.slow(routing_logits, routing_bias, ws.ids, ws.w, output, ws.obuf, T, off, rsf)
    if ws.k_sort is not None:
        ws.k_sort.slow(ws.ids, ws.counts, ws.lists, T, off)
    ws.k_gemm1.slow(
        routing_logits, routing_bias, ws.w, output, hidden_states, hidden_states_scale, gemm1_weights,
        gemm1_weights_scale, ws.ids, ws.counts, ws.lists, ws.cq, ws.cs, ws.part, ws.ticket, ws.obuf, T, off, rsf,
    )  # fmt: skip
    ws.k_gemm2.slow(
        ws.cq, ws.cs, gemm2_weights, gemm2_weights_scale, ws.ids, ws.w, ws.counts, ws.lists, output, ws.obuf, T, off
    )
    ws.k_fin.slow(ws.ids, ws.obuf, output, T, off)
    if not INTERPRET and ws.fast_ok and ws.ready():
        ws.scratch_ptrs = tuple(
            t.data_ptr() for t in (ws.ids, ws.w, ws.counts, ws.lists, ws.cq, ws.cs, ws.part, ws.ticket, ws.obuf)
        )
        ws.get_stream = triton.runtime.driver.active.get_current_stream
        ws.dev_index = hidden_states.get_device()
        _LAST[0] = ws
    return output
