"""The GEMM2 launch: O = C[rows] @ W2[e]^T on FP8 tensor cores, times the routing weight.

Persistent over (M tile, H block) items, the same way as GEMM1 (one fp8 dot per K block and term of C,
block scales on the fp32 partials). A token with one local expert gets its bf16 output row written
here; the rows of a token with several are parked for the finalize launch.
"""

import triton
import triton.language as tl

from .exact import round_to_bf16
from .launch import Kernel, gdc_launch_dependents, gdc_wait, prefetch_l2
from .rows import hit_tiles, local_ids, tile_expert, tile_rows


@triton.jit(do_not_specialize=["T", "local_off"])
def gemm2_kernel(
    cq_ptr, cs_ptr, w2_ptr, w2s_ptr, ids_ptr, w_ptr, counts_ptr, lists_ptr, out_ptr, obuf_ptr,
    T, local_off,
    NL: tl.constexpr, NLP: tl.constexpr, H: tl.constexpr, I: tl.constexpr, TP: tl.constexpr, TOPK: tl.constexpr,
    BM: tl.constexpr, BH: tl.constexpr, ITERS: tl.constexpr, TILE_FAST: tl.constexpr, INLINE: tl.constexpr,
    ATOMIC: tl.constexpr, EXACT: tl.constexpr, SWAP: tl.constexpr, SPF: tl.constexpr, PDL: tl.constexpr,
    PF_LINES: tl.constexpr, OBUF_BF16: tl.constexpr, IDS_LATE: tl.constexpr, KU: tl.constexpr, NT: tl.constexpr,
):  # fmt: skip
    """O = C[rows] @ W2[e]^T for (M tile, H block) items, times the routing weight; single-expert
    tokens' bf16 rows written here, the others parked for `finalize_kernel`. SWAP as in GEMM1.
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
    c, n_tiles = hit_tiles(loc, counts_ptr, NL, NLP, TP, TOPK, BM, INLINE)
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
            # several local experts: park the row; `finalize_kernel` sums the token's rows
            if ATOMIC:
                tl.atomic_add(obuf_ptr + a_offs, acc, mask=amask2, sem="relaxed")
            elif OBUF_BF16:
                tl.store(obuf_ptr.to(tl.pointer_type(tl.bfloat16)) + b_offs, val.to(tl.bfloat16), mask=mmask)
            else:
                tl.store(obuf_ptr + b_offs, acc, mask=mmask)


def launch_for(ws) -> Kernel:
    """GEMM2 of workspace `ws`: launched with PDL while GEMM1 runs."""
    t = ws.tiles
    items = ws.gemm2_max_tiles * (ws.H // t.gemm2_block_h)
    return Kernel(
        gemm2_kernel, (items,),
        dict(NL=ws.NL, NLP=ws.NLP, H=ws.H, I=ws.I, TP=ws.TP, TOPK=ws.TOPK, BM=t.gemm2_block_m, BH=t.gemm2_block_h,
             ITERS=triton.cdiv(items, min(items, ws.sms)), TILE_FAST=t.gemm2_tiles_fastest, INLINE=t.inline_rows,
             ATOMIC=t.atomic_reduction, EXACT=ws.exact, SWAP=t.gemm2_swapped, SPF=t.gemm2_scale_prefetch,
             KU=ws.gemm2_k_blocks, PDL=ws.pdl, PF_LINES=t.gemm2_w2_prefetch_lines if ws.pdl else 0,
             OBUF_BF16=t.bf16_partial_rows, IDS_LATE=t.fused_routing, NT=ws.n_terms),
        persistent_sms=ws.sms, num_warps=t.gemm2_warps, num_stages=t.gemm2_stages, **ws.pdl_launch,
    )  # fmt: skip
