"""The GEMM1 launch: G1 = X[rows] @ W1[e]^T on FP8 tensor cores, SwiGLU and the FP8 re-quantization of
C in its epilogue.

Persistent over (M tile, 128 columns of I, K split) items. The token rows are gathered inside the
kernel; one fp8 dot per 128-wide K block, whose block scales are applied to the fp32 partial sum (the
tensor core never accumulates across K blocks); the gate and up tiles of the same 128 columns in one
program; epilogue C = silu(gate) * up (silu on the SECOND half of G1), stored as one or two FP8 terms
(`quant.swiglu_quant_store`). Small T: swapped operands (weight rows on the MMA's M side, BM = 16 tokens
on its N side); T <= 4: split-K, the last program of a tile (a ticket) sums the partials in split order
and runs the epilogue; T <= 8: every program routes all T tokens itself (no routing launch).
"""

import triton
import triton.language as tl

from .gemm1_tile import item_tile_major, park_partials, w1_tile
from .launch import Kernel, gdc_launch_dependents, gdc_wait
from .quant import swiglu_quant_store
from .routing import N_GROUP, TOPK_GROUP, route_tokens, zero_rows, zero_sum_rows
from .rows import hit_tiles, local_ids, tile_rows


@triton.jit(do_not_specialize=["T", "local_off"])
def gemm1_kernel(
    logits_ptr, bias_ptr, wts_ptr, out_ptr, hs_ptr, hss_ptr, w1_ptr, w1s_ptr, ids_ptr, counts_ptr, lists_ptr, cq_ptr,
    cs_ptr, part_ptr, ticket_ptr, obuf_ptr,
    T, local_off, rsf,
    E: tl.constexpr, NG: tl.constexpr, KG: tl.constexpr, NL: tl.constexpr, NLP: tl.constexpr, H: tl.constexpr,
    I: tl.constexpr, TP: tl.constexpr, TOPK: tl.constexpr,
    BM: tl.constexpr, SPLIT_K: tl.constexpr, ITERS: tl.constexpr, TILE_FAST: tl.constexpr, INLINE: tl.constexpr,
    EXACT: tl.constexpr, SWAP: tl.constexpr, SPF: tl.constexpr, PDL: tl.constexpr, TRIGGER: tl.constexpr,
    FUSE_ROUTE: tl.constexpr, USE_LIBDEVICE: tl.constexpr, ZERO_SCRATCH: tl.constexpr, KU: tl.constexpr,
    NT: tl.constexpr,
):  # fmt: skip
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
    c, n_tiles = hit_tiles(loc, counts_ptr, NL, NLP, TP, TOPK, BM, INLINE)
    n_items = n_tiles * (NJ * SPLIT_K)
    for it in range(0, ITERS):
        item = pid + it * nprog
        if item < n_items:
            if TILE_FAST:  # consecutive programs: tiles of one (column block, split)
                tile = item % n_tiles
                r = item // n_tiles
                sk = r % SPLIT_K
                jb = r // SPLIT_K
            else:  # consecutive programs: splits, then column blocks, of one tile
                tile, jb, sk = item_tile_major(item, SPLIT_K, NJ)
            tj = tile * NJ + jb
            e, rmask, rid = tile_rows(tile, c, loc, lists_ptr, T, BM, NLP, TP, TOPK, INLINE)
            tok = rid // TOPK  # rows past the tile's count have rid 0: valid addresses, masked tiles
            acc_u, acc_g = w1_tile(e, jb, tok, rmask, sk * KPS, hs_ptr, hss_ptr, w1_ptr, w1s_ptr, T, H, I, BM,
                                   KPS, SWAP, SPF, KU)  # fmt: skip
            if SPLIT_K == 1:
                swiglu_quant_store(acc_u, acc_g, rid, rmask, jb, cq_ptr, cs_ptr, I, BJ, EXACT, SWAP, NT)
            else:  # the last split of the tile to arrive sums the partials in split order
                last, up, gate = park_partials(acc_u, acc_g, part_ptr, ticket_ptr, tj, tj * SPLIT_K, sk, SPLIT_K, BM,
                                               SWAP)
                if last:
                    swiglu_quant_store(up, gate, rid, rmask, jb, cq_ptr, cs_ptr, I, BJ, EXACT, SWAP, NT)


def launch_for(ws) -> Kernel:
    """GEMM1 of workspace `ws`: launched with PDL after a routing / sort launch (not when it routes)."""
    t = ws.tiles
    fused = t.fused_routing
    items = ws.gemm1_max_tiles * (ws.I // 128) * ws.split_k
    return Kernel(
        gemm1_kernel, (items,),
        dict(E=ws.E, NG=N_GROUP, KG=TOPK_GROUP, NL=ws.NL, NLP=ws.NLP, H=ws.H, I=ws.I, TP=ws.TP, TOPK=ws.TOPK,
             BM=t.gemm1_block_m, SPLIT_K=ws.split_k, ITERS=triton.cdiv(items, min(items, ws.sms)),
             TILE_FAST=t.gemm1_tiles_fastest, INLINE=t.inline_rows, EXACT=ws.exact, SWAP=t.gemm1_swapped,
             SPF=t.gemm1_scale_prefetch, KU=ws.gemm1_k_blocks, PDL=ws.pdl and not fused, TRIGGER=ws.pdl,
             FUSE_ROUTE=fused, USE_LIBDEVICE=ws.libdevice, ZERO_SCRATCH=t.atomic_reduction, NT=ws.n_terms),
        persistent_sms=ws.sms, num_warps=t.gemm1_warps, num_stages=t.gemm1_stages,
        **({} if fused else ws.pdl_launch),
    )  # fmt: skip
