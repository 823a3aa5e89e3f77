"""GEMM2 of the large-T path on Hopper: a grouped, warp-specialized Gluon kernel over GEMM1's permuted C.

    O[rows of tile t, columns hb] = C_perm[tile t] @ W2[e(t)][rows of hb]^T, block-scaled, times each
    row's routing weight

C comes from `gemm1_gluon.py` as a hi/lo FP8 pair in permuted rows (cq_perm [MP, 2I], cs_perm
[2I/128, MP]). Its K block 2k is the hi term and 2k + 1 the lo term of I block k, and both multiply
the same W2 block k: so GEMM2 is one block-scaled GEMM over K = 2I whose B tile is loaded once per
pair of A blocks. The structure is GEMM1's (GEMM_NOTES.md, version (b)):
- work items (tile, 128 or 256 columns of H) in grouped order (GROUP_M tiles of one column block run
  together), claimed from a counter by the producer warp as in GEMM1 (`item_ring.py`);
- one TMA producer warp: per I block, the hi and the lo 64-row halves of the C tile with their
  scales, and W2[e]'s rows of the item;
- two consumer warpgroups (rows 0-63 and 64-127), each per I block and 128 columns: with SHARED_LO
  (the lo term stored in the hi term's scale: the default) the hi and the lo wgmma chained into one
  partial, one wait, one promotion (scale c_hi_scale[row] * w2_scale[hb, k]); otherwise (rung 3's
  pair) the hi wgmma, wait, promote, and the lo wgmma on the same W2 tile likewise;
- epilogue: times the routing weight, bf16; a token with one local expert gets its output row
  written here, a token with several has its rows parked in bf16 at their row ids for rung 3's
  finalize launch (its `bf16_partial_rows` layout), exactly as rung 3's GEMM2 does;
- with WAIT_TILES (`large_t.Workspace.gemm2_under_gemm1`) the kernel is launched with PDL while GEMM1
  runs: its CTAs start in the SMs GEMM1's finished CTAs leave, and the producer loads a tile's C only once
  tile_done[tile] holds GEMM1's 2 x I/128 signals (a volatile spin, an acquire fence, and a proxy fence:
  C was stored by plain stores, TMA reads it through the async proxy). It lets the finalize start early
  too (which waits for this kernel's end).

Hopper (sm_90) only: wgmma (`gemm_blockscaled.gluon_supported`).
"""

import triton.language as tl

from .gemm1_gluon import BJ, HALF_M, ROWS_PER_CONSUMER
from .gemm_blockscaled import HAVE_GLUON
from .launch import Kernel
from .permute import BM as TILE_ROWS
from .routing import TOP_K

if HAVE_GLUON:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor

    from . import item_ring
    from .gemm1_gluon import (
        ACC,
        ACC_COLS,
        ACC_ROWS,
        _promote_block,
        launch_dependents,
        pass_stages,
        row_scale_vectors,
    )
    from .gemm_blockscaled import _gl_grouped_tile, fp8_tile_layout, row_scaled_descriptors

TOPK = tl.constexpr(TOP_K)

if HAVE_GLUON:

    @gluon.jit
    def wait_for_count(ptr, target):
        """Spin until *ptr >= target, then an acquire fence (the count's release stores are visible after it)
        and a proxy fence (so that TMA loads, the async proxy, see them too)."""
        while gl.load(ptr, volatile=True) < target:
            pass
        gl.inline_asm_elementwise("fence.acq_rel.gpu; fence.proxy.async.global; mov.b32 $0, 0;", "=r", [],
                                  dtype=gl.int32, is_pure=False, pack=1)  # fmt: skip

    @gluon.jit
    def _producer(c_desc, w_desc, cs_desc, c_bufs, w_bufs, cs_bufs, ready, empty, items, item_ready, item_empty,
                  tile_expert_ptr, n_tiles_ptr, rid_ptr, tile_done_ptr, claims_ptr, GROUP_M, H, I,
                  SHARED_LO: gl.constexpr, SKIP_PADDING: gl.constexpr, WAIT_TILES: gl.constexpr,
                  DYNAMIC: gl.constexpr):  # fmt: skip
        """One warp: claims the CTA's items and hands each to the consumers (`item_ring`), then issues the
        TMA loads of its I blocks into the ring of stages, across item boundaries. Stage s holds C blocks
        at 4 s + 2 h + term (h: the consumer's half, term: hi 0, lo 1); with
        SHARED_LO only the hi term's scales (the lo term's are the same)."""
        BK: gl.constexpr = 128
        BN: gl.constexpr = w_bufs.shape[1]
        NKB = I // BK
        NHB = H // BN
        STAGES: gl.constexpr = w_bufs.shape[0]
        nbytes: gl.constexpr = 4 * (c_desc.block_type.nbytes + cs_desc.block_type.nbytes) + w_desc.block_type.nbytes
        nbytes_shared_lo: gl.constexpr = nbytes - 2 * cs_desc.block_type.nbytes  # the lo term's scales not loaded
        n_tiles = gl.load(n_tiles_ptr)
        it = 0
        j = 0
        ready_tile = -1  # the last tile whose C was waited for
        item = gl.program_id(0)
        while item < n_tiles * NHB:
            following = item_ring.next_item(item, claims_ptr, DYNAMIC)  # claimed now: its latency under the loads
            tile, hb = _gl_grouped_tile(item, n_tiles, NHB, GROUP_M)
            flags = item_ring.padding_flags(rid_ptr, tile, SKIP_PADDING)
            item_ring.publish(items, item_ready, item_empty, j, item * 4 + flags)
            if WAIT_TILES:
                if tile != ready_tile:  # GEMM1's signals: one per warpgroup and 128 columns of I
                    wait_for_count(tile_done_ptr + tile, 2 * NKB)
                    ready_tile = tile
            e = gl.load(tile_expert_ptr + tile)
            w_row = e * H + hb * BN  # W2 viewed as [NL * H, I]
            for kb in range(NKB):
                s = it % STAGES
                mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
                bar = ready.index(s)
                if SHARED_LO:
                    mbarrier.expect(bar, nbytes_shared_lo)
                else:
                    mbarrier.expect(bar, nbytes)
                for h in gl.static_range(2):
                    m = tile * (2 * HALF_M) + h * HALF_M
                    for term in gl.static_range(2):
                        tma.async_copy_global_to_shared(c_desc, [m, (2 * kb + term) * BK], bar,
                                                        c_bufs.index(4 * s + 2 * h + term))  # fmt: skip
                        if term == 0 or not SHARED_LO:
                            tma.async_copy_global_to_shared(cs_desc, [2 * kb + term, m], bar,
                                                            cs_bufs.index(4 * s + 2 * h + term))  # fmt: skip
                tma.async_copy_global_to_shared(w_desc, [w_row, kb * BK], bar, w_bufs.index(s))
                it += 1
            item = following
            j += 1
        item_ring.publish(items, item_ready, item_empty, j, -1)  # no more items

    @gluon.jit
    def _epilogue(acc, p, h, rid_ptr, ids_ptr, w_ptr, out_ptr, obuf_ptr, H, NL, local_off):
        """Rows p of the permuted tile, columns h: times the routing weight, bf16; the token's output row
        (one local expert) or the row parked at its id (several), as rung 3's GEMM2 writes them."""
        rid = gl.load(rid_ptr + p)
        ok = rid >= 0  # padding rows: -1
        rid = gl.where(ok, rid, 0)
        tok = rid // TOPK
        n_local = gl.zeros([HALF_M], gl.int32, ACC_ROWS)
        for k in gl.static_range(TOPK):
            loc = gl.load(ids_ptr + tok * TOPK + k, mask=ok, other=-1) - local_off
            n_local += ((loc >= 0) & (loc < NL)).to(gl.int32)
        o = (acc * gl.load(w_ptr + rid, mask=ok, other=0.0)[:, None]).to(gl.bfloat16)
        gl.store(out_ptr + tok.to(gl.int64)[:, None] * H + h[None, :], o, mask=(ok & (n_local == 1))[:, None])
        gl.store(obuf_ptr + rid.to(gl.int64)[:, None] * H + h[None, :], o, mask=(ok & (n_local > 1))[:, None])

    @gluon.jit
    def _promote_c(c_hi, c_lo, w_smem, spare, acc, s_hi, s_lo, sw, SHARED_LO: gl.constexpr):
        """acc + C's I block (its hi and lo terms) @ one 128-row W2 tile^T, scaled: with SHARED_LO both
        terms in one wgmma group and one promotion (s_lo is s_hi), else one promotion per term."""
        if SHARED_LO:
            acc, spare = _promote_block(c_hi, w_smem, spare, acc, s_hi * sw, c_lo)
        else:
            acc, spare = _promote_block(c_hi, w_smem, spare, acc, s_hi * sw)
            acc, spare = _promote_block(c_lo, w_smem, spare, acc, s_lo * sw)
        return acc, spare

    @gluon.jit
    def _consumer(c_bufs, w_bufs, cs_bufs, ready, empty, items, item_ready, item_empty, w2s_ptr, tile_expert_ptr,
                  n_tiles_ptr, rid_ptr, ids_ptr, w_ptr, out_ptr, obuf_ptr, GROUP_M, H, I, NL, local_off,
                  SHARED_LO: gl.constexpr, WG: gl.constexpr):  # fmt: skip
        """One warpgroup: rows [WG*64, WG*64+64) of every item's tile, items as the producer hands them
        over; BN = 256 columns as two 128-column accumulators on the two halves of the W2 tile (three fp32
        tiles with the partial, as GEMM1). No MMA where the rows are all padding (the epilogue then stores
        nothing), as in GEMM1."""
        BK: gl.constexpr = 128
        BN: gl.constexpr = w_bufs.shape[1]
        TWO: gl.constexpr = BN == 2 * BJ
        NKB = I // BK
        NHB = H // BN
        STAGES: gl.constexpr = w_bufs.shape[0]
        cs_rows = row_scale_vectors(cs_bufs)
        cols = gl.arange(0, BJ, layout=ACC_COLS)
        n_tiles = gl.load(n_tiles_ptr)
        it = 0
        j = 0
        value = item_ring.take(items, item_ready, item_empty, j)
        while value >= 0:
            item = value // 4
            idle = ((value >> WG) & 1) != 0
            tile, hb = _gl_grouped_tile(item, n_tiles, NHB, GROUP_M)
            e = gl.load(tile_expert_ptr + tile)
            sw_ptr = w2s_ptr + (e * (H // BJ) + hb * (BN // BJ)) * NKB  # w2 scales [NL, H/128, I/128]
            acc0 = gl.zeros([HALF_M, BJ], gl.float32, ACC)
            acc1 = gl.zeros([HALF_M, BJ], gl.float32, ACC)  # BN = 256: columns 128-255
            spare = gl.zeros([HALF_M, BJ], gl.float32, ACC)  # the partial's registers (values unused)
            if idle:
                it = pass_stages(ready, empty, it, NKB)
            else:
                for kb in range(NKB):
                    s = it % STAGES
                    mbarrier.wait(ready.index(s), (it // STAGES) & 1)
                    s_hi = cs_rows.index(4 * s + 2 * WG).load(ACC_ROWS)
                    c_hi = c_bufs.index(4 * s + 2 * WG)
                    c_lo = c_bufs.index(4 * s + 2 * WG + 1)
                    w_smem = w_bufs.index(s)
                    sw = gl.load(sw_ptr + kb)
                    if SHARED_LO:  # the lo term's scale is the hi term's (not loaded)
                        s_lo = s_hi
                    else:
                        s_lo = cs_rows.index(4 * s + 2 * WG + 1).load(ACC_ROWS)
                    acc0, spare = _promote_c(c_hi, c_lo, w_smem.slice(0, BJ), spare, acc0, s_hi, s_lo, sw, SHARED_LO)
                    if TWO:
                        sw1 = gl.load(sw_ptr + NKB + kb)
                        acc1, spare = _promote_c(c_hi, c_lo, w_smem.slice(BJ, BJ), spare, acc1, s_hi, s_lo, sw1,
                                                 SHARED_LO)  # fmt: skip
                    mbarrier.arrive(empty.index(s), count=1)
                    it += 1
            p = tile * (2 * HALF_M) + WG * HALF_M + gl.arange(0, HALF_M, layout=ACC_ROWS)
            h = hb * BN + cols
            _epilogue(acc0, p, h, rid_ptr, ids_ptr, w_ptr, out_ptr, obuf_ptr, H, NL, local_off)
            if TWO:
                _epilogue(acc1, p, h + BJ, rid_ptr, ids_ptr, w_ptr, out_ptr, obuf_ptr, H, NL, local_off)
            j += 1
            value = item_ring.take(items, item_ready, item_empty, j)

    @gluon.jit
    def _consumer_1(c_bufs, w_bufs, cs_bufs, ready, empty, items, item_ready, item_empty, w2s_ptr, tile_expert_ptr,
                    n_tiles_ptr, rid_ptr, ids_ptr, w_ptr, out_ptr, obuf_ptr, GROUP_M, H, I, NL, local_off,
                    SHARED_LO):  # fmt: skip
        # a worker partition takes no literal arguments (Triton 3.6), hence this wrapper (GEMM_NOTES.md)
        _consumer(c_bufs, w_bufs, cs_bufs, ready, empty, items, item_ready, item_empty, w2s_ptr, tile_expert_ptr,
                  n_tiles_ptr, rid_ptr, ids_ptr, w_ptr, out_ptr, obuf_ptr, GROUP_M, H, I, NL, local_off, SHARED_LO,
                  1)  # fmt: skip

    @gluon.jit(do_not_specialize=["local_off"])  # `Kernel.fast` reuses the first compile for every offset
    def gemm2_gluon_kernel(c_desc, w_desc, cs_desc, w2s_ptr, tile_expert_ptr, n_tiles_ptr, rid_ptr, ids_ptr, w_ptr,
                           out_ptr, obuf_ptr, tile_done_ptr, claims_ptr, H, I, NL, local_off, GROUP_M: gl.constexpr,
                           STAGES: gl.constexpr, SHARED_LO: gl.constexpr, SKIP_PADDING: gl.constexpr,
                           WAIT_TILES: gl.constexpr, DYNAMIC: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                           PRODUCER_REGS: gl.constexpr):  # fmt: skip
        if WAIT_TILES:  # the finalize may take the SMs of finished CTAs (it waits for this kernel's end)
            launch_dependents()
        c_bufs = gl.allocate_shared_memory(c_desc.dtype, [4 * STAGES, HALF_M, 128], c_desc.layout)
        cs_bufs = gl.allocate_shared_memory(cs_desc.dtype, [4 * STAGES, 1, HALF_M], cs_desc.layout)
        w_bufs = gl.allocate_shared_memory(w_desc.dtype, [STAGES] + w_desc.block_type.shape, w_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)  # the producer's expect, then the TMA bytes
            mbarrier.init(empty.index(i), count=2)  # one arrive per consumer warpgroup
        items, item_ready, item_empty = item_ring.allocate()
        consumer_args = (c_bufs, w_bufs, cs_bufs, ready, empty, items, item_ready, item_empty, w2s_ptr, tile_expert_ptr,
                         n_tiles_ptr, rid_ptr, ids_ptr, w_ptr, out_ptr, obuf_ptr, GROUP_M, H, I, NL, local_off,
                         SHARED_LO)  # fmt: skip
        producer_args = (c_desc, w_desc, cs_desc, c_bufs, w_bufs, cs_bufs, ready, empty, items, item_ready, item_empty,
                         tile_expert_ptr, n_tiles_ptr, rid_ptr, tile_done_ptr, claims_ptr, GROUP_M, H, I, SHARED_LO,
                         SKIP_PADDING, WAIT_TILES, DYNAMIC)  # fmt: skip
        gl.warp_specialize([(_consumer, consumer_args + (0,)), (_consumer_1, consumer_args),
                            (_producer, producer_args)], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])  # fmt: skip


def launch_for(ws, sms, *, stages=None, group_m=8, consumer_regs=240, producer_regs=24, maxnreg=168) -> Kernel:
    """The GEMM2 launch of large-T workspace `ws` on `sms` SMs (warps and registers as GEMM1's), with
    `ws.gemm2_columns` of H per item: 128 (one accumulator, 4 stages of 49 KB) or 256 (two, 3 stages of
    65 KB); C's lo term in hi's scale if `ws.shared_lo_scale`."""
    assert TILE_ROWS == 2 * ROWS_PER_CONSUMER, "a permuted tile is both consumers' rows"
    n = ws.gemm2_columns
    assert n in (BJ, 2 * BJ) and ws.H % n == 0, n
    items = ws.perm_max_tiles * (ws.H // n)
    consts = dict(GROUP_M=group_m, STAGES=stages or (4 if n == BJ else 3), SHARED_LO=ws.shared_lo_scale,
                  SKIP_PADDING=ws.skip_padding_halves, WAIT_TILES=ws.gemm2_under_gemm1, DYNAMIC=ws.dynamic_items,
                  CONSUMER_REGS=consumer_regs, PRODUCER_REGS=producer_regs)  # fmt: skip
    pdl = dict(launch_pdl=True) if ws.gemm2_under_gemm1 else {}
    return Kernel(gemm2_gluon_kernel, (min(sms, items),), consts, num_warps=4, maxnreg=maxnreg, **pdl)


def fixed_arguments(ws) -> dict:
    """What the launch's arguments keep from call to call, built once per workspace: the TMA descriptors
    of C and its scales, and W2's tile layout."""
    c, cs = row_scaled_descriptors(ws.cq_perm, ws.cs_perm, ROWS_PER_CONSUMER)
    return dict(c=c, cs=cs, w_layout=fp8_tile_layout(ws.gemm2_columns))


def arguments(ws, gemm2_weights, gemm2_weights_scale, output, local_off) -> tuple:
    """The launch's runtime arguments: TMA descriptors of C, W2 (viewed [NL * H, I]) and C's scales, then
    pointers (the parked rows as bf16: rung 3's `bf16_partial_rows` layout) and sizes."""
    NL, H, I = gemm2_weights.shape
    f = ws.gemm2_fixed
    w_desc = GluonTensorDescriptor.from_tensor(gemm2_weights.view(NL * H, I), [ws.gemm2_columns, 128], f["w_layout"])
    return (f["c"], w_desc, f["cs"], gemm2_weights_scale, ws.tile_expert, ws.n_tiles, ws.rid_perm, ws.ids, ws.w, output,
            ws.obuf_bf16, ws.tile_done, ws.gemm2_claims, H, I, NL, local_off)  # fmt: skip
