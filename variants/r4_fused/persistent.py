"""The whole MoE layer as one persistent Triton kernel, and its workspace.

Work items, claimed in order from one global counter (`sync[CLAIM]`) by the programs of a persistent
grid:

    [routing items] [sort items] [GEMM1 items] [GEMM2 items] [finalize items]

1. routing (T > 4): BT tokens an item: sigmoid, group top-2, top-4 groups, top-8 experts, weights
   (`route_tokens`, bit-identical to the reference); the exact zero rows of tokens with no local expert.
   At T <= 4 every program routes all T tokens itself and there are no routing items.
2. sort (T > 128): one item per local expert lists its rows in token order; one more lists the tokens
   with several local experts (the finalize's only work).
3. GEMM1: (M tile, 128 columns of I, K split): G1 = X[rows] @ W1[e]^T on FP8 tensor cores, one dot per
   128-wide K block with its block scales applied to the fp32 partial; SwiGLU and the hi/lo FP8
   re-quantization of C in the epilogue (split-K: the last split to arrive sums the partials in split
   order). Then `tile_done[tile] += 1`. Or (`Tiles.stream_k`) one item per program: an equal share of
   all of GEMM1's K blocks, which may end inside one (tile, column block) and start inside the next;
   each column block's shares are summed in share order by the last to arrive.
4. GEMM2: (M tile, group of H blocks): O = C @ W2[e]^T times the routing weight, the (H block, K block)
   steps in one pipelined loop. The item waits until `tile_done[tile]` says all of its tile's C is
   written (optionally, `Tiles.prefetch_w2`, it first asks the L2 for its whole weight block). A token
   with one local expert gets its bf16 row here; a token with several parks one fp32 row per (token,
   slot). Then `hb_done[hb] += 1` for each of its H blocks.
5. finalize (H block, token block): waits until every tile's GEMM2 item of that H block is done, then
   sums the parked rows of tokens with several local experts in slot order (deterministic), bf16. With
   sorted rows the token blocks are of the sort's list of those tokens, else of all T tokens.

Why this cannot deadlock: an item only ever waits for items with lower numbers, and every lower item
was claimed before it by a program that is running (it claimed it) and that finishes it without
waiting on anything later. So any grid size is safe, even one larger than what is co-resident.
Data another program wrote is read with plain loads after the wait's acquire: every such address is
written once per call, and `.cg` would make Triton emit strong loads that are never merged (v4). No
program may read such an address before its wait (a tile's padding rows are masked, not pointed at row
0): the early read of a program sharing the SM could leave a stale line in their L1 (v32).
The last program to leave resets the counters, so the next call (or a CUDA graph replay) starts
from zero; split-K tickets are reset by the program that consumes them.
"""

import dataclasses

import torch
import triton
import triton.language as tl

from .exact import INTERPRET, round_to_bf16
from .gemm1_tile import item_tile_major, park_partials, w1_tile
from .launch import Kernel, next_pow2, prefetch_l2_bulk, sm_count
from .quant import swiglu_quant_store
from .routing import N_GROUP, TOP_K, TOPK_GROUP, local_experts, route_tokens, use_libdevice, zero_rows
from .rows import expert_rows, hit_tiles, local_ids, max_tiles, tile_rows
from .tiles import tiles_for

BLOCK = 128
NT = tl.constexpr(2)  # C as a hi/lo pair of fp8 terms (rung 3's v7): two GEMM2 dots per K block
# the int32 `sync` buffer: four counters, then hb_done[NHB], then tile_done[max tiles]
CLAIM = tl.constexpr(0)  # the next work item
ROUTED = tl.constexpr(1)  # routing items done
SORTED_CNT = tl.constexpr(2)  # sort items done
EXITED = tl.constexpr(3)  # programs that left
HEAD = tl.constexpr(4)


@triton.jit
def _wait_at_least(ptr, target):
    """Spin until the counter at ptr reaches target, then acquire: what its writers released
    (stored before their increment) is visible to every thread of this program afterwards."""
    v = tl.load(ptr, volatile=True)
    while v < target:
        v = tl.load(ptr, volatile=True)
    # the acquire, its result used: Triton 3.6 drops an add of 0 whose result is unused, and its acquire
    # with it (until v33 no wait had a fence in the SASS); used, it is an acquire load (LDG.STRONG.GPU,
    # then CCTL.IVALL: this SM's L1 invalidated). It never loops: the counter only grows
    while tl.atomic_add(ptr, 0, sem="acquire") < target:
        pass
    tl.debug_barrier()


@triton.jit
def _signal(ptr):
    """Release: every thread's stores before this point are visible to whoever acquires the counter."""
    tl.debug_barrier()
    tl.atomic_add(ptr, 1, sem="release")


@triton.jit
def _now(TRACE: tl.constexpr):
    """The GPU's global nanosecond timer when tracing (the optional trace of work items), else 0."""
    if TRACE:
        t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    else:
        t = tl.zeros((), tl.int64)
    return t


@triton.jit
def _trace(rec_ptr, field: tl.constexpr, value, TRACE: tl.constexpr):
    """Trace record of a work item: [kind * 65536 + program, start, ready (after its wait), end] in ns."""
    if TRACE:
        tl.store(rec_ptr + field, value)


@triton.jit
def _claim(sync_ptr):
    return tl.atomic_add(sync_ptr + CLAIM, 1, sem="relaxed")


@triton.jit
def _gemm1_item(g, c, loc, hs_ptr, hss_ptr, w1_ptr, w1s_ptr, lists_ptr, cq_ptr, cs_ptr, part_ptr, ticket_ptr,
                tile_done_ptr, T, H: tl.constexpr, I: tl.constexpr, NLP: tl.constexpr, TP: tl.constexpr,
                TOPK: tl.constexpr, BM: tl.constexpr, split, INLINE: tl.constexpr, SWAP: tl.constexpr,
                EXACT: tl.constexpr):  # fmt: skip
    """G1 for (M tile, column block jb, K split); items are numbered tile by tile (all column blocks and
    splits of tile 0 first), so the first tiles' C is complete early and GEMM2 can start on them. `split`:
    the table's constexpr, or (`_fill_split`) chosen on the GPU, at least 2."""
    BK: tl.constexpr = 128
    BJ: tl.constexpr = 128
    NKB: tl.constexpr = H // BK
    NJ: tl.constexpr = I // BJ
    kps = NKB // split
    tile, jb, sk = item_tile_major(g, split, NJ)
    tj = tile * NJ + jb
    e, rmask, rid = tile_rows(tile, c, loc, lists_ptr, T, BM, NLP, TP, TOPK, INLINE)
    tok = rid // TOPK  # rows past the tile's count have rid 0: valid addresses, masked
    acc_u, acc_g = w1_tile(e, jb, tok, rmask, sk * kps, hs_ptr, hss_ptr, w1_ptr, w1s_ptr, T, H, I, BM, kps, SWAP,
                           True, 1, SWAP)  # fmt: skip
    if split == 1:
        swiglu_quant_store(acc_u, acc_g, rid, rmask, jb, cq_ptr, cs_ptr, I, BJ, EXACT, SWAP, NT)
        _signal(tile_done_ptr + tile)
    else:  # the last split of (tile, jb) to arrive sums the partials in split order
        last, up, gate = park_partials(acc_u, acc_g, part_ptr, ticket_ptr, tj, tj * split, sk, split, BM, SWAP)
        if last:
            swiglu_quant_store(up, gate, rid, rmask, jb, cq_ptr, cs_ptr, I, BJ, EXACT, SWAP, NT)
            _signal(tile_done_ptr + tile)


@triton.jit
def _fill_split(n_tiles, nprog, NJ: tl.constexpr, SPLIT_K: tl.constexpr):
    """GEMM1's K splits for this call (`Tiles.split_k_fill`): SPLIT_K, or twice it where twice the items
    need fewer than twice the waves of programs, i.e. fill the last wave better (T = 15's 12 tiles: 384
    items are 1.45 waves of 264 programs, 768 are 2.91; T = 14's 15 and 16's 16 tiles: 1.82 / 1.94 waves,
    the same fill either way, and the fewer partials win, v44)."""
    n = n_tiles * (NJ * SPLIT_K)
    return tl.where(2 * tl.cdiv(n, nprog) > tl.cdiv(2 * n, nprog), 2 * SPLIT_K, SPLIT_K)


@triton.jit
def _share_of(x, S, W):
    """The stream-K share that K block x (of W, in S shares: share s has blocks s*W//S .. (s+1)*W//S - 1)
    belongs to."""
    return ((x + 1) * S + W - 1) // W - 1


@triton.jit
def _gemm1_share(s, S, W, c, loc, hs_ptr, hss_ptr, w1_ptr, w1s_ptr, lists_ptr, cq_ptr, cs_ptr, part_ptr, ticket_ptr,
                 tile_done_ptr, T, H: tl.constexpr, I: tl.constexpr, NLP: tl.constexpr, TP: tl.constexpr,
                 TOPK: tl.constexpr, BM: tl.constexpr, INLINE: tl.constexpr, SWAP: tl.constexpr,
                 EXACT: tl.constexpr):  # fmt: skip
    """Stream-K share s of S: GEMM1's W K blocks ((tile, column block) by (tile, column block), tile by
    tile, K blocks in order) cut into S equal runs; each (tile, column block) the run crosses gets its
    partial, and the share that completes one runs its epilogue. Every program streams the same bytes."""
    BK: tl.constexpr = 128
    BJ: tl.constexpr = 128
    NKB: tl.constexpr = H // BK
    NJ: tl.constexpr = I // BJ
    x = (s * W) // S
    end = ((s + 1) * W) // S
    while x < end:
        tj = x // NKB  # (tile, column block) tile * NJ + jb
        stop = tl.minimum(end, (tj + 1) * NKB)
        tile = tj // NJ
        jb = tj % NJ
        e, rmask, rid = tile_rows(tile, c, loc, lists_ptr, T, BM, NLP, TP, TOPK, INLINE)
        tok = rid // TOPK
        acc_u, acc_g = w1_tile(e, jb, tok, rmask, x - tj * NKB, hs_ptr, hss_ptr, w1_ptr, w1s_ptr, T, H, I, BM,
                               stop - x, SWAP, True, 1, SWAP)  # fmt: skip
        first = _share_of(tj * NKB, S, W)
        n = _share_of((tj + 1) * NKB - 1, S, W) - first + 1
        last = n == 1  # a column block from one share alone is not parked
        up = acc_u
        gate = acc_g
        if n > 1:  # slots tj + first .. tj + first + n - 1 (the next column block's start at least one past them)
            last, up, gate = park_partials(acc_u, acc_g, part_ptr, ticket_ptr, tj, tj + first, s - first, n, BM,
                                           SWAP)  # fmt: skip
        if last:
            swiglu_quant_store(up, gate, rid, rmask, jb, cq_ptr, cs_ptr, I, BJ, EXACT, SWAP, NT)
            _signal(tile_done_ptr + tile)
        x = stop


@triton.jit
def _gemm2_scales(s_ptrs, rmask, ws_base, hb0, step, NKB: tl.constexpr, BH: tl.constexpr, NT: tl.constexpr,
                  SWAP: tl.constexpr):  # fmt: skip
    """Scales of flattened GEMM2 step `step` (H block hb0 + step // NKB, K block step % NKB): the rows'
    hi and lo scales ([BM]; 0 past the tile's rows) and the weight block's scale. SWAP: `s_ptrs` are the
    stacked operand's columns ([2 BM], hi and lo of each row side by side), whose one load is both."""
    kb = step % NKB
    hb = hb0 + step // NKB
    # plain loads: the wait's acquire made C's scales visible (`.cg` would make them strong loads, issued
    # once per replica, v4). Masked: a padding row's address is row 0's, which another tile may not have
    # written yet; an early read can leave a stale line in the SM's L1 for the program that handles row 0
    # (suspected in the one bad trial of the sweep at 548a11b: T = 53, rel L2 2.1e-2)
    c = tl.load(s_ptrs + kb * NT, mask=rmask, other=0.0)
    if SWAP:
        lo = c
    else:
        lo = tl.load(s_ptrs + kb * NT + 1, mask=rmask, other=0.0)
    v = tl.load(ws_base + ((hb * BH) // 128) * NKB + kb)
    return c, lo, v


@triton.jit
def _gemm2_step(acc, step, asc, asl, wsc, w_ptrs, a_ptrs, amask, hb0, tok64, rid64, wrow, single, multi, out_ptr,
                obuf_ptr, hn, H: tl.constexpr, I: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr,
                NKB: tl.constexpr, NT: tl.constexpr, SWAP: tl.constexpr, EXACT: tl.constexpr):  # fmt: skip
    """One (H block, K block) step of a GEMM2 item; after an H block's last K block its epilogue: a token
    with one local expert gets its final bf16 row, a token with several parks its fp32 row."""
    kb = step % NKB
    hb = hb0 + step // NKB
    w = tl.load(w_ptrs + (hb * BH).to(tl.int64) * I + kb * BK)
    a = tl.load(a_ptrs + kb * (NT * BK), mask=amask, other=0.0, cache_modifier=".cg")
    if SWAP:  # one dot over [BK, 2 BM]: each row's hi and lo terms side by side (columns 2m, 2m + 1), which
        # the MMA's accumulator layout keeps in one thread, so the split below moves no data; the same
        # products and the same order of adds as a dot a term (v81: one MMA group and wait a step, not two)
        part = tl.dot(w, a) * (asc * wsc)[None, :]
        hi, lo = tl.split(tl.reshape(part, (part.shape[0], part.shape[1] // 2, 2)))
        acc += hi
        acc += lo
    else:  # hi and lo terms of C on the same weight tile, each with its own row scale
        al = tl.load(a_ptrs + kb * (NT * BK) + BK, mask=amask, other=0.0, cache_modifier=".cg")
        acc += tl.dot(a, w) * (asc * wsc)[:, None]
        acc += tl.dot(al, w) * (asl * wsc)[:, None]
    if kb == NKB - 1:
        h = hb * BH + hn
        if SWAP:
            res = acc * wrow[None, :]
            o_offs = tok64[None, :] * H + h[:, None]
            b_offs = rid64[None, :] * H + h[:, None]
            smask = single[None, :]
            mmask = multi[None, :]
        else:
            res = acc * wrow[:, None]
            o_offs = tok64[:, None] * H + h[None, :]
            b_offs = rid64[:, None] * H + h[None, :]
            smask = single[:, None]
            mmask = multi[:, None]
        val = res
        if EXACT:
            val = round_to_bf16(val)
        tl.store(out_ptr + o_offs, val.to(tl.bfloat16), mask=smask)
        tl.store(obuf_ptr + b_offs, res, mask=mmask)
        acc = tl.zeros(acc.shape, tl.float32)
    return acc


@triton.jit
def _gemm2_item(g, tile0, c, loc, cq_ptr, cs_ptr, w2_ptr, w2s_ptr, ids_ptr, wts_ptr, lists_ptr, out_ptr, obuf_ptr,
                tile_done_ptr, hb_done_ptr, T, local_off, NL: tl.constexpr, NLP: tl.constexpr, H: tl.constexpr,
                I: tl.constexpr, TP: tl.constexpr, TOPK: tl.constexpr, BM: tl.constexpr, BH: tl.constexpr,
                HBG: tl.constexpr, INLINE: tl.constexpr, SWAP: tl.constexpr, EXACT: tl.constexpr,
                PF: tl.constexpr, G2PAIR: tl.constexpr, G2_STAGES: tl.constexpr, rec_ptr,
                TRACE: tl.constexpr):  # fmt: skip
    """O for (M tile, HBG consecutive H blocks), times the routing weight; items g numbered tile by tile
    from tile `tile0`. One flattened loop over (H block, K block) keeps the weights streaming from one H
    block into the next (the epilogue of a block runs inside the loop, as in Triton's persistent matmul
    tutorial)."""
    BK: tl.constexpr = 128
    NKB: tl.constexpr = I // BK
    NHB: tl.constexpr = H // BH
    NG2: tl.constexpr = NHB // HBG  # H-block groups (HBG divides NHB)
    NJ: tl.constexpr = I // 128
    tile = tile0 + g // NG2
    hb0 = (g % NG2) * HBG
    e, rmask, rid = tile_rows(tile, c, loc, lists_ptr, T, BM, NLP, TP, TOPK, INLINE)
    tok = rid // TOPK
    kk = tl.arange(0, BK)
    hn = tl.arange(0, BH)
    k8 = tl.arange(0, TOPK)
    w_base = w2_ptr + e.to(tl.int64) * (H * I)
    # the routing weights and how many local experts each row's token has (known since routing)
    wrow = tl.load(wts_ptr + rid, mask=rmask, other=0.0)
    lt = tl.load(ids_ptr + tok[:, None] * TOPK + k8[None, :], mask=rmask[:, None], other=-1)
    nloc = local_experts(lt - local_off, NL)
    single = rmask & (nloc == 1)
    multi = rmask & (nloc > 1)
    tok64 = tok.to(tl.int64)
    rid64 = rid.to(tl.int64)
    if PF:  # the weights do not depend on GEMM1: the L2 fetches the item's whole block (HBG * BH rows of I
        # bytes, one bulk request per row) while we wait (v30: no gain at T = 1, slower above; off)
        rows = hb0 * BH + tl.arange(0, HBG * BH)
        prefetch_l2_bulk(w_base + rows.to(tl.int64) * I, tl.full((HBG * BH,), I, tl.int32))
    _wait_at_least(tile_done_ptr + tile, NJ)  # all of this tile's C (and its scales) is written
    _trace(rec_ptr, 2, _now(TRACE), TRACE)
    ws_base = w2s_ptr + e * ((H // 128) * NKB)  # [H / 128, NKB] scales of expert e
    if SWAP:  # C's operand [BK, 2 BM]: column 2m + t is term t (hi 0, lo 1) of row m; its scales likewise
        term = tl.reshape(tl.join(tl.zeros_like(rid), tl.full(rid.shape, 1, rid.dtype)), (2 * BM,))
        rid2 = tl.reshape(tl.join(rid64, rid64), (2 * BM,))
        s_mask = tl.reshape(tl.join(rmask, rmask), (2 * BM,))
        w_ptrs = w_base + hn[:, None] * I + kk[None, :]  # [BH, BK] at H block 0, K block 0
        a_ptrs = cq_ptr + (rid2 * (NT * I) + term * BK)[None, :] + kk[:, None]
        amask = s_mask[None, :]
        s_ptrs = cs_ptr + rid2 * (NT * NKB) + term  # the row's scales are [NKB, NT]
        acc = tl.zeros((BH, BM), tl.float32)
    else:
        s_ptrs = cs_ptr + rid * (NT * NKB)  # the row's scales: [NKB, NT]
        s_mask = rmask
        w_ptrs = w_base + hn[None, :] * I + kk[:, None]  # [BK, BH]
        a_ptrs = cq_ptr + rid64[:, None] * (NT * I) + kk[None, :]  # [BM, BK]
        amask = rmask[:, None]
        acc = tl.zeros((BM, BH), tl.float32)
    last = HBG * NKB - 1
    c0n, l0n, v0n = _gemm2_scales(s_ptrs, s_mask, ws_base, hb0, 0, NKB, BH, NT, SWAP)
    if G2PAIR:  # two (H block, K block) steps per iteration, their scales loaded one iteration ahead (v3:
        # meant to hide the scale loads' latency; it measured no faster than one step, the real cost was
        # `.cg`, v4)
        c1n, l1n, v1n = _gemm2_scales(s_ptrs, s_mask, ws_base, hb0, tl.minimum(1, last), NKB, BH, NT, SWAP)
        for it in tl.range(0, (HBG * NKB) // 2, num_stages=G2_STAGES):
            c0, l0, v0 = c0n, l0n, v0n
            c1, l1, v1 = c1n, l1n, v1n
            c0n, l0n, v0n = _gemm2_scales(s_ptrs, s_mask, ws_base, hb0, tl.minimum(2 * it + 2, last), NKB, BH, NT,
                                          SWAP)  # fmt: skip
            c1n, l1n, v1n = _gemm2_scales(s_ptrs, s_mask, ws_base, hb0, tl.minimum(2 * it + 3, last), NKB, BH, NT,
                                          SWAP)  # fmt: skip
            acc = _gemm2_step(acc, 2 * it, c0, l0, v0, w_ptrs, a_ptrs, amask, hb0, tok64, rid64, wrow, single,
                              multi, out_ptr, obuf_ptr, hn, H, I, BH, BK, NKB, NT, SWAP, EXACT)  # fmt: skip
            acc = _gemm2_step(acc, 2 * it + 1, c1, l1, v1, w_ptrs, a_ptrs, amask, hb0, tok64, rid64, wrow, single,
                              multi, out_ptr, obuf_ptr, hn, H, I, BH, BK, NKB, NT, SWAP, EXACT)  # fmt: skip
    else:  # one step an iteration: each pipeline stage holds one weight tile, half the shared memory
        for step in tl.range(0, HBG * NKB, num_stages=G2_STAGES):
            c0, l0, v0 = c0n, l0n, v0n
            c0n, l0n, v0n = _gemm2_scales(s_ptrs, s_mask, ws_base, hb0, tl.minimum(step + 1, last), NKB, BH, NT, SWAP)
            acc = _gemm2_step(acc, step, c0, l0, v0, w_ptrs, a_ptrs, amask, hb0, tok64, rid64, wrow, single,
                              multi, out_ptr, obuf_ptr, hn, H, I, BH, BK, NKB, NT, SWAP, EXACT)  # fmt: skip
    tl.debug_barrier()  # every thread's rows are stored before the H blocks are counted done
    hbs = hb0 + tl.arange(0, HBG)
    tl.atomic_add(hb_done_ptr + hbs, tl.full((HBG,), 1, tl.int32), sem="release")


@triton.jit
def _finalize_item(f, n_tiles, ntb, ids_ptr, multi_ptr, n_multi, obuf_ptr, out_ptr, hb_done_ptr, T, local_off,
                   NL: tl.constexpr, H: tl.constexpr, TOPK: tl.constexpr, BH: tl.constexpr, BT: tl.constexpr,
                   LISTED: tl.constexpr, EXACT: tl.constexpr, rec_ptr, TRACE: tl.constexpr):  # fmt: skip
    """Output columns of H block hb for the tokens of block tb that have several local experts: their
    parked rows summed in fp32 in slot order, cast to bf16. Items f = hb * ntb + tb. LISTED: the blocks
    are of the sort's list of such tokens (`_multi_tokens`, n_multi of them), else of all T tokens."""
    hb = f // ntb
    tb = f % ntb
    _wait_at_least(hb_done_ptr + hb, n_tiles)
    _trace(rec_ptr, 2, _now(TRACE), TRACE)
    h = hb * BH + tl.arange(0, BH)
    k8 = tl.arange(0, TOPK)
    r = tb * BT + tl.arange(0, BT)
    if LISTED:
        tm = r < n_multi
        t = tl.load(multi_ptr + r, mask=tm, other=0)
    else:
        t = r
        tm = t < T
    lt = tl.load(ids_ptr + t[:, None] * TOPK + k8[None, :], mask=tm[:, None], other=-1)
    loc = lt - local_off
    need = tm & (local_experts(loc, NL) > 1)
    if tl.max(need.to(tl.int32), axis=0) > 0:
        t64 = t.to(tl.int64)
        acc = tl.zeros((BT, BH), tl.float32)
        for k in tl.static_range(TOPK):
            lk = tl.sum(tl.where(k8[None, :] == k, loc, 0), axis=1)
            use = need & (lk >= 0) & (lk < NL)
            offs = (t64 * TOPK + k)[:, None] * H + h[None, :]
            acc += tl.load(obuf_ptr + offs, mask=use[:, None], other=0.0)
        if EXACT:
            acc = round_to_bf16(acc)
        tl.store(out_ptr + t64[:, None] * H + h[None, :], acc.to(tl.bfloat16), mask=need[:, None])


@triton.jit
def _multi_tokens(ids_ptr, count_ptr, multi_ptr, T, local_off, NL: tl.constexpr, TOPK: tl.constexpr,
                  BC: tl.constexpr, NCHUNK: tl.constexpr):  # fmt: skip
    """A sort item: the tokens with several local experts (the finalize's only work) in token order at
    multi[0 .. n), and n at count_ptr. NCHUNK = cdiv(T, BC)."""
    k = tl.arange(0, TOPK)[None, :]
    base = 0
    for ci in range(0, NCHUNK):
        t = ci * BC + tl.arange(0, BC)
        loc = tl.load(ids_ptr + t[:, None] * TOPK + k, mask=(t < T)[:, None], other=-1) - local_off
        many = (local_experts(loc, NL) > 1).to(tl.int32)
        pos = base + tl.cumsum(many, axis=0) - many
        tl.store(multi_ptr + pos, t, mask=many > 0)
        base += tl.sum(many)
    tl.store(count_ptr, base)


@triton.jit(do_not_specialize=["T", "local_off"])
def moe_kernel(
    logits_ptr, bias_ptr, hs_ptr, hss_ptr, w1_ptr, w1s_ptr, w2_ptr, w2s_ptr, out_ptr,
    ids_ptr, wts_ptr, counts_ptr, lists_ptr, cq_ptr, cs_ptr, part_ptr, ticket_ptr, obuf_ptr, sync_ptr, trace_ptr,
    T, local_off, rsf,
    E: tl.constexpr, NL: tl.constexpr, NLP: tl.constexpr, H: tl.constexpr, I: tl.constexpr,
    NG: tl.constexpr, KG: tl.constexpr, TOPK: tl.constexpr, TP: tl.constexpr,
    BM: tl.constexpr, BH: tl.constexpr, HBG: tl.constexpr, TAIL_WAVES: tl.constexpr, HBG_TAIL: tl.constexpr,
    SPLIT_K: tl.constexpr, SPLIT_FILL: tl.constexpr, STREAM_K: tl.constexpr, ROUTE_ALL: tl.constexpr,
    BT_ROUTE: tl.constexpr,
    SORTED: tl.constexpr, BC_SORT: tl.constexpr, NCHUNK_SORT: tl.constexpr, SWAP: tl.constexpr, PF: tl.constexpr,
    G2PAIR: tl.constexpr, G2_STAGES: tl.constexpr, SWAP2: tl.constexpr, BT_FIN: tl.constexpr, NTB_FIN: tl.constexpr,
    LISTED_FIN: tl.constexpr, NSYNC: tl.constexpr, EXACT: tl.constexpr,
    USE_LIBDEVICE: tl.constexpr,
    TRACE: tl.constexpr, MAX_ITEMS: tl.constexpr,
):  # fmt: skip
    """The whole layer (module docstring): routing, sort, GEMM1, GEMM2 and finalize work items."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    NJ: tl.constexpr = I // 128
    NHB: tl.constexpr = H // BH
    INLINE: tl.constexpr = not SORTED
    hb_done_ptr = sync_ptr + HEAD
    tile_done_ptr = sync_ptr + HEAD + NHB
    k8 = tl.arange(0, TOPK)
    prog_rec = trace_ptr + (MAX_ITEMS + pid) * 4  # per program: [-, start, GEMM phase start, exit]
    _trace(prog_rec, 1, _now(TRACE), TRACE)

    # 1. routing
    if ROUTE_ALL:  # tiny T: this program routes every token itself (all programs store the same values)
        t = tl.arange(0, TP)
        tmask = t < T
        gids, gw = route_tokens(logits_ptr, bias_ptr, t, tmask, rsf, E, NG, KG, TOPK, TP, USE_LIBDEVICE)
        tl.store(ids_ptr + t[:, None] * TOPK + k8[None, :], gids, mask=tmask[:, None])
        tl.store(wts_ptr + t[:, None] * TOPK + k8[None, :], gw, mask=tmask[:, None])
        zero_rows(gids, t, tmask & (t % nprog == pid), out_ptr, local_off, NL, H, TP)
        tl.debug_barrier()  # this program's own stores are read back below
        n_route = 0
    else:
        n_route = tl.cdiv(T, BT_ROUTE)
    item = _claim(sync_ptr)
    if not ROUTE_ALL:
        while item < n_route:
            t = item * BT_ROUTE + tl.arange(0, BT_ROUTE)
            tmask = t < T
            gids, gw = route_tokens(logits_ptr, bias_ptr, t, tmask, rsf, E, NG, KG, TOPK, BT_ROUTE, USE_LIBDEVICE)
            tl.store(ids_ptr + t[:, None] * TOPK + k8[None, :], gids, mask=tmask[:, None])
            tl.store(wts_ptr + t[:, None] * TOPK + k8[None, :], gw, mask=tmask[:, None])
            zero_rows(gids, t, tmask, out_ptr, local_off, NL, H, BT_ROUTE)
            _signal(sync_ptr + ROUTED)
            item = _claim(sync_ptr)
        _wait_at_least(sync_ptr + ROUTED, n_route)

    # 2. sort (large T): an item per local expert, and (LISTED_FIN) one for the finalize's tokens
    n_sort = 0
    multi_ptr = lists_ptr + NL * T  # the list of tokens with several local experts, after the experts' rows
    n_multi = 0
    ntb = NTB_FIN
    if SORTED:
        n_sort = NL
        if LISTED_FIN:
            n_sort += 1
        while item < n_route + n_sort:
            if item - n_route < NL:
                expert_rows(item - n_route, ids_ptr, counts_ptr, lists_ptr, T, local_off, TOPK, BC_SORT,
                            NCHUNK_SORT)  # fmt: skip
            else:
                _multi_tokens(ids_ptr, counts_ptr + NL, multi_ptr, T, local_off, NL, TOPK, BC_SORT, NCHUNK_SORT)
            _signal(sync_ptr + SORTED_CNT)
            item = _claim(sync_ptr)
        _wait_at_least(sync_ptr + SORTED_CNT, n_sort)
        loc = None
        if LISTED_FIN:
            n_multi = tl.load(counts_ptr + NL)  # the wait's acquire made it visible
            ntb = tl.cdiv(n_multi, BT_FIN)
    else:
        loc = local_ids(ids_ptr, T, local_off, TP, TOPK)

    # 3-5. the GEMMs and the finalize, over the tiles of the experts that were hit
    c, n_tiles = hit_tiles(loc, counts_ptr, NL, NLP, TP, TOPK, BM, INLINE)
    w1_blocks = n_tiles * (NJ * (H // 128))  # stream-K: GEMM1's K blocks, shared out equally
    if STREAM_K:
        n1 = tl.minimum(nprog, w1_blocks)  # no empty share: a column block must hear from all of its own
        split = 1
    else:
        split = SPLIT_K
        if SPLIT_FILL:
            split = _fill_split(n_tiles, nprog, NJ, SPLIT_K)
        n1 = n_tiles * (NJ * split)
    # a short tail: the last tiles' GEMM2 items take HBG_TAIL H blocks (about TAIL_WAVES waves of such
    # items), so that the programs run out of work within a small item of each other
    n_small = 0
    if TAIL_WAVES > 0:
        n_small = tl.minimum(n_tiles, tl.cdiv(TAIL_WAVES * nprog, NHB // HBG_TAIL))
    n2_big = (n_tiles - n_small) * (NHB // HBG)
    n2 = n2_big + n_small * (NHB // HBG_TAIL)
    base = n_route + n_sort
    g = item - base
    _trace(prog_rec, 2, _now(TRACE), TRACE)
    while g < n1 + n2 + NHB * ntb:
        g_next = _claim(sync_ptr) - base  # claimed ahead: the atomic's latency hides behind this item
        rec = trace_ptr + (g + base) * 4
        kind = tl.where(g < n1, 1, tl.where(g < n1 + n2, 2, 3))
        _trace(rec, 0, (kind * 65536 + pid).to(tl.int64), TRACE)
        t0 = _now(TRACE)
        _trace(rec, 1, t0, TRACE)
        _trace(rec, 2, t0, TRACE)
        if STREAM_K and g < n1:
            _gemm1_share(g, n1, w1_blocks, c, loc, hs_ptr, hss_ptr, w1_ptr, w1s_ptr, lists_ptr, cq_ptr, cs_ptr,
                         part_ptr, ticket_ptr, tile_done_ptr, T, H, I, NLP, TP, TOPK, BM, INLINE, SWAP,
                         EXACT)  # fmt: skip
        elif g < n1:
            _gemm1_item(g, c, loc, hs_ptr, hss_ptr, w1_ptr, w1s_ptr, lists_ptr, cq_ptr, cs_ptr, part_ptr, ticket_ptr,
                        tile_done_ptr, T, H, I, NLP, TP, TOPK, BM, split, INLINE, SWAP, EXACT)  # fmt: skip
        elif g < n1 + n2_big:
            _gemm2_item(g - n1, 0, c, loc, cq_ptr, cs_ptr, w2_ptr, w2s_ptr, ids_ptr, wts_ptr, lists_ptr, out_ptr,
                        obuf_ptr, tile_done_ptr, hb_done_ptr, T, local_off, NL, NLP, H, I, TP, TOPK, BM, BH,
                        HBG, INLINE, SWAP2, EXACT, PF, G2PAIR, G2_STAGES, rec, TRACE)  # fmt: skip
        elif TAIL_WAVES > 0 and g < n1 + n2:
            _gemm2_item(g - n1 - n2_big, n_tiles - n_small, c, loc, cq_ptr, cs_ptr, w2_ptr, w2s_ptr, ids_ptr,
                        wts_ptr, lists_ptr, out_ptr, obuf_ptr, tile_done_ptr, hb_done_ptr, T, local_off, NL, NLP, H,
                        I, TP, TOPK, BM, BH, HBG_TAIL, INLINE, SWAP2, EXACT, PF, G2PAIR, G2_STAGES, rec,
                        TRACE)  # fmt: skip
        else:
            _finalize_item(g - n1 - n2, n_tiles, ntb, ids_ptr, multi_ptr, n_multi, obuf_ptr, out_ptr, hb_done_ptr,
                           T, local_off, NL, H, TOPK, BH, BT_FIN, LISTED_FIN, EXACT, rec, TRACE)  # fmt: skip
        _trace(rec, 3, _now(TRACE), TRACE)
        g = g_next

    # the last program out resets every counter for the next call
    _trace(prog_rec, 3, _now(TRACE), TRACE)
    tl.debug_barrier()
    if tl.atomic_add(sync_ptr + EXITED, 1, sem="acq_rel") == nprog - 1:
        z = tl.arange(0, NSYNC)
        tl.store(sync_ptr + z, tl.zeros((NSYNC,), tl.int32))


class Workspace:
    """Scratch buffers and the compiled kernel for one (device, T, geometry), reused across calls."""

    def __init__(self, device, T, E, NL, H, I, tiles=None, cap=90, sms=None):
        if H % BLOCK or I % BLOCK or E % N_GROUP:
            raise ValueError(f"unsupported geometry H={H} I={I} E={E}")
        t = tiles or tiles_for(T, cap, INTERPRET)
        for name in ("rows_per_tile", "h_block", "tokens_per_route_item", "tokens_per_finalize_block"):
            v = getattr(t, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name}={v}: tile sizes must be powers of two")
        split_k = 1 if t.stream_k else t.split_k
        while (H // BLOCK) % split_k:  # the splits must divide the K blocks
            split_k -= 1
        if t.h_block not in (64, BLOCK):  # GEMM2 applies one W2 scale per (H block, K block), so an H block
            # lies inside one 128-row scale block (v27: 256 was accepted here and gave rel L2 1.0); 64: the
            # swapped MMA's smallest M
            raise ValueError(f"h_block={t.h_block}: the H block must be 64 or 128 rows, inside one W2 scale block")
        hbg = t.h_blocks_per_item
        while (H // t.h_block) % hbg or hbg & (hbg - 1):  # whole groups, a power of two H blocks
            hbg -= 1
        if (hbg * (I // BLOCK)) % 2:  # a GEMM2 item runs its (H block, K block) steps two at a time
            hbg *= 2
            if (H // t.h_block) % hbg:
                raise ValueError("GEMM2 needs an even number of (H block, K block) steps per item")
        # the tail's items: one H block where that is an even number of steps
        hbg_tail = 1 if (I // BLOCK) % 2 == 0 else 2
        if hbg_tail >= hbg:
            t = dataclasses.replace(t, tail_waves=0)  # the items are as small as the tail's already
        # split-K doubled on the GPU where that fills the last wave better: the splits must divide the K blocks
        fill = t.split_k_fill and not t.stream_k and split_k > 1 and (H // BLOCK) % (2 * split_k) == 0
        t = dataclasses.replace(t, split_k=split_k, h_blocks_per_item=hbg, split_k_fill=fill)
        splits_max = 2 * split_k if fill else split_k
        self.T, self.E, self.w1_shape, self.tiles = T, E, torch.Size((NL, 2 * I, H)), t
        R = T * TOP_K
        nj, nhb, bm = I // BLOCK, H // t.h_block, t.rows_per_tile
        tiles_max = max_tiles(T, NL, bm)
        i32 = dict(dtype=torch.int32, device=device)
        f32 = dict(dtype=torch.float32, device=device)
        self.ids = torch.empty(T, TOP_K, **i32)
        self.wts = torch.empty(T, TOP_K, **f32)
        listed = t.sorted_rows and t.finalize_listed
        self.counts = torch.empty(NL + 1, **i32)  # rows per local expert, then (listed) the finalize's tokens
        self.lists = torch.empty((NL + 1) * T if t.sorted_rows else 1, **i32)  # each expert's rows, then those
        self.cq = torch.empty(R, NT.value * I, dtype=torch.float8_e4m3fn, device=device)
        self.cs = torch.empty(R, I // BLOCK, NT.value, **f32)
        sms = sms or sm_count(device)
        max_grid = 8 * sms  # programs at most (Kernel: co-resident ones only); stream-K has one share each
        # partial slots: split-K's per (tile, column block) and split; stream-K's column block tj gets slots
        # tj + first share .. (the shares it hears from), so fewer than column blocks + shares in all
        slots = tiles_max * nj * splits_max if split_k > 1 else (tiles_max * nj + max_grid if t.stream_k else 0)
        self.part = torch.empty(max(1, slots * 2 * BLOCK * bm), **f32)
        self.ticket = torch.zeros(tiles_max * nj if slots else 1, **i32)
        self.obuf = torch.empty(R, H, **f32)
        nsync = next_pow2(HEAD.value + nhb + tiles_max)
        self.sync = torch.zeros(nsync, **i32)
        # the grid never needs more programs than there are work items at most
        items = (
            triton.cdiv(T, t.tokens_per_route_item)
            + NL + 1
            + (max_grid if t.stream_k else tiles_max * nj * splits_max)
            + tiles_max * (nhb // min(hbg, hbg_tail))
            + nhb * triton.cdiv(T, t.tokens_per_finalize_block)
        )
        # optional trace (tiles.trace): a record per work item, then one per program (at most 8 per SM)
        self.trace = torch.zeros((items + 8 * sms) * 4 if t.trace else 1, dtype=torch.int64, device=device)
        self.scratch = (self.ids, self.wts, self.counts, self.lists, self.cq, self.cs, self.part, self.ticket,
                        self.obuf, self.sync, self.trace)  # fmt: skip
        bc_sort = min(1024, max(16, next_pow2(T)))
        consts = dict(
            E=E, NL=NL, NLP=next_pow2(NL), H=H, I=I, NG=N_GROUP, KG=TOPK_GROUP, TOPK=TOP_K, TP=next_pow2(T),
            BM=bm, BH=t.h_block, HBG=hbg, TAIL_WAVES=t.tail_waves, HBG_TAIL=hbg_tail, SPLIT_K=split_k, SPLIT_FILL=fill,
            STREAM_K=t.stream_k, ROUTE_ALL=t.route_in_every_program,
            BT_ROUTE=t.tokens_per_route_item, SORTED=t.sorted_rows, BC_SORT=bc_sort,
            NCHUNK_SORT=triton.cdiv(T, bc_sort), SWAP=t.swapped, PF=t.prefetch_w2,
            G2PAIR=t.gemm2_step_pairs, G2_STAGES=t.gemm2_stages or t.num_stages, SWAP2=t.swapped or t.gemm2_swapped,
            BT_FIN=t.tokens_per_finalize_block,
            NTB_FIN=triton.cdiv(T, t.tokens_per_finalize_block), LISTED_FIN=listed, NSYNC=nsync, EXACT=INTERPRET,
            USE_LIBDEVICE=use_libdevice(device), TRACE=t.trace, MAX_ITEMS=items,
        )  # fmt: skip
        self.kernel = Kernel(moe_kernel, (items,), consts, persistent_sms=sms,
                             num_warps=t.num_warps, num_stages=t.num_stages,
                             **({"maxnreg": t.max_registers} if t.max_registers else {}))  # fmt: skip
