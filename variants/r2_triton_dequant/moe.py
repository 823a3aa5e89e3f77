"""Rung 2: Triton grouped GEMMs that dequantize FP8 in registers and use bf16 tensor-core dots.

One call, no host sync, the same kernels every call of a workload:
  1. routing: the reference's vectorized torch code (`route`), so ties break exactly as it does;
  2. grouping: the T*8 (token, slot) pairs sorted by global expert id on the device; a rank's
     experts are a contiguous id range, so its pairs form one contiguous run of the sorted order,
     and `searchsorted` gives each local expert's rows [bounds[e], bounds[e+1]) (no bincount: on
     CUDA it reads its maximum back to the host);
  3. `_gemm1_swiglu`: one grouped launch over all local experts; a program owns BN columns of the
     intermediate and computes the matching up (rows n) and gate (rows I+n) tiles of G1 together,
     so SwiGLU runs in registers; C = silu(gate) * up is stored in bf16 (fp32 off a GPU, see
     `dot_tl` in `run`);
  4. `_gemm2`: one grouped launch; O = C @ W2^T times the pair's routing weight, fp32, per pair;
  5. `_combine`: each token sums its local pairs (at most 8) in fp32 and writes its bf16 row,
     exact zeros when it has none: every element of `output` is written.

FP8 is loaded as FP8 and dequantized tile by tile inside the GEMM main loops: fp8 -> fp32, times
its block scale (per row for activations, one scalar per 128x128 block for weights), -> bf16,
then a bf16 x bf16 -> fp32 `tl.dot`. No dequantized tensor is ever written to memory.

Grids are sized from shapes alone (the worst case of the routing); a program loops over the row
tiles it owns (tile ids pid_m, pid_m + grid_m, ...) and programs with no tile exit at once. With
the grid capped near a few programs per SM this is the worst-case grid without its long tail of
empty programs at large T.
"""

import torch
import triton
import triton.language as tl

from .reference import BLOCK, route

# ---- kernels --------------------------------------------------------------------------------


@triton.jit
def _tile_table(bounds_ptr, N_LOCAL: tl.constexpr, NL_POW2: tl.constexpr, BM: tl.constexpr):
    """Per local expert: first row, end row, first row tile, row tiles; and the total tile count."""
    e = tl.arange(0, NL_POW2)
    in_range = e < N_LOCAL
    lo = tl.load(bounds_ptr + e, mask=in_range, other=0).to(tl.int32)
    hi = tl.load(bounds_ptr + e + 1, mask=in_range, other=0).to(tl.int32)
    tiles = (hi - lo + BM - 1) // BM
    ends = tl.cumsum(tiles, axis=0)
    return lo, hi, ends - tiles, ends, tl.sum(tiles, axis=0)


@triton.jit
def _program_tile(N: tl.constexpr, BN: tl.constexpr):
    """This program's column tile (of the N // BN) and the first row tile it owns."""
    pid = tl.program_id(0)
    n_tiles = N // BN
    return pid % n_tiles, pid // n_tiles


@triton.jit
def _tile_rows(tile, lo, hi, first, ends, order_ptr, NL_POW2: tl.constexpr, BM: tl.constexpr):
    """Row tile `tile` (< total tiles): its local expert, its sorted positions [BM], which of them are its
    rows, and the flattened (token, slot) pair each holds (0 past the end)."""
    e = tl.arange(0, NL_POW2)
    expert = tl.sum((ends <= tile).to(tl.int32), axis=0)
    sel = e == expert
    start = tl.sum(tl.where(sel, lo, 0), axis=0) + (tile - tl.sum(tl.where(sel, first, 0), axis=0)) * BM
    end = tl.sum(tl.where(sel, hi, 0), axis=0)
    rows = start + tl.arange(0, BM)
    rmask = rows < end
    pair = tl.load(order_ptr + rows, mask=rmask, other=0)
    return expert, rows, rmask, pair


@triton.jit
def _gemm1_swiglu(
    hs_ptr,  # [T, H] fp8
    hs_scale_ptr,  # [H/128, T] fp32, block-major
    w1_ptr,  # [E, 2I, H] fp8
    w1_scale_ptr,  # [E, 2I/128, H/128] fp32
    order_ptr,  # [T*K] int64: sorted position -> flattened (token, slot) pair
    bounds_ptr,  # [E+1] int64: local expert e owns sorted positions [bounds[e], bounds[e+1])
    c_ptr,  # [T*K, I] bf16 out, indexed by sorted position
    inv_ptr,  # [T*K] int32 out: flattened pair -> sorted position (local pairs only)
    stride_hs,
    stride_hss,
    stride_w1e,
    stride_w1n,
    stride_w1se,
    stride_w1sn,
    stride_c,
    grid_m,
    H: tl.constexpr,  # geometry is constexpr: loop bounds must be (Triton's interpreter, numpy >= 2.4)
    INTER: tl.constexpr,
    N_LOCAL: tl.constexpr,
    NL_POW2: tl.constexpr,
    TOPK: tl.constexpr,
    SB: tl.constexpr,  # scale block (128)
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    DOT: tl.constexpr,  # dtype of the dot operands: bf16 (GPU) or fp32
):
    pid_n, pid_m0 = _program_tile(INTER, BN)
    lo, hi, first, ends, total = _tile_table(bounds_ptr, N_LOCAL, NL_POW2, BM)

    cols = pid_n * BN + tl.arange(0, BN)
    ks = tl.arange(0, BK)
    up_srow = (pid_n * BN) // SB  # BN divides SB: one weight scale per (tile, K block)
    gate_srow = (INTER + pid_n * BN) // SB

    tile = pid_m0
    while tile < total:  # no iteration at all for a program with no tile
        expert, rows, rmask, pair = _tile_rows(tile, lo, hi, first, ends, order_ptr, NL_POW2, BM)
        tok = pair // TOPK
        # Where each local pair landed, for the combine kernel; written once per row tile.
        tl.store(inv_ptr + pair, rows, mask=rmask & (pid_n == 0))

        a_ptrs = hs_ptr + tok[:, None] * stride_hs + ks[None, :]  # [BM, BK]
        w_base = w1_ptr + expert.to(tl.int64) * stride_w1e
        up_ptrs = w_base + cols[None, :].to(tl.int64) * stride_w1n + ks[:, None]  # [BK, BN], K contiguous
        gate_ptrs = up_ptrs + INTER * stride_w1n
        s_base = w1_scale_ptr + expert * stride_w1se
        acc_up = tl.zeros((BM, BN), dtype=tl.float32)
        acc_gate = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, H, BK):
            kb = k0 // SB
            a_s = tl.load(hs_scale_ptr + kb * stride_hss + tok, mask=rmask, other=0.0)
            a = tl.load(a_ptrs + k0, mask=rmask[:, None], other=0.0)
            a = (a.to(tl.float32) * a_s[:, None]).to(DOT)
            s_up = tl.load(s_base + up_srow * stride_w1sn + kb)
            s_gate = tl.load(s_base + gate_srow * stride_w1sn + kb)
            b_up = (tl.load(up_ptrs + k0).to(tl.float32) * s_up).to(DOT)
            b_gate = (tl.load(gate_ptrs + k0).to(tl.float32) * s_gate).to(DOT)
            acc_up = tl.dot(a, b_up, acc_up)
            acc_gate = tl.dot(a, b_gate, acc_gate)
        # SwiGLU on the tile: silu of the SECOND half (gate, rows I+n) times the first (up, rows n).
        c = acc_up * (acc_gate * tl.sigmoid(acc_gate))
        c_ptrs = c_ptr + rows[:, None].to(tl.int64) * stride_c + cols[None, :]
        tl.store(c_ptrs, c.to(c_ptr.dtype.element_ty), mask=rmask[:, None])
        tile += grid_m


@triton.jit
def _gemm2(
    c_ptr,  # [T*K, I] bf16, by sorted position
    w2_ptr,  # [E, H, I] fp8
    w2_scale_ptr,  # [E, H/128, I/128] fp32
    order_ptr,
    bounds_ptr,
    weights_ptr,  # [T*K] fp32 routing weights, by flattened pair
    y_ptr,  # [T*K, H] fp32 out, by sorted position: routing weight * O
    stride_c,
    stride_w2e,
    stride_w2h,
    stride_w2se,
    stride_w2sh,
    stride_y,
    grid_m,
    H: tl.constexpr,
    INTER: tl.constexpr,
    N_LOCAL: tl.constexpr,
    NL_POW2: tl.constexpr,
    SB: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
    DOT: tl.constexpr,
):
    pid_n, pid_m0 = _program_tile(H, BN)
    lo, hi, first, ends, total = _tile_table(bounds_ptr, N_LOCAL, NL_POW2, BM)

    cols = pid_n * BN + tl.arange(0, BN)
    ks = tl.arange(0, BK)
    srow = (pid_n * BN) // SB

    tile = pid_m0
    while tile < total:
        expert, rows, rmask, pair = _tile_rows(tile, lo, hi, first, ends, order_ptr, NL_POW2, BM)
        rw = tl.load(weights_ptr + pair, mask=rmask, other=0.0)

        a_ptrs = c_ptr + rows[:, None].to(tl.int64) * stride_c + ks[None, :]  # [BM, BK] bf16
        b_ptrs = w2_ptr + expert.to(tl.int64) * stride_w2e + cols[None, :].to(tl.int64) * stride_w2h + ks[:, None]
        s_base = w2_scale_ptr + expert * stride_w2se + srow * stride_w2sh
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, INTER, BK):
            a = tl.load(a_ptrs + k0, mask=rmask[:, None], other=0.0).to(DOT)
            s = tl.load(s_base + k0 // SB)
            b = (tl.load(b_ptrs + k0).to(tl.float32) * s).to(DOT)
            acc = tl.dot(a, b, acc)
        y_ptrs = y_ptr + rows[:, None].to(tl.int64) * stride_y + cols[None, :]
        tl.store(y_ptrs, acc * rw[:, None], mask=rmask[:, None])
        tile += grid_m


@triton.jit
def _combine(
    y_ptr,  # [T*K, H] fp32, by sorted position
    inv_ptr,  # [T*K] int32: flattened pair -> sorted position
    experts_ptr,  # [T, K] int64 global expert ids
    out_ptr,  # [T, H] bf16
    H,
    offset,
    stride_y,
    stride_out,
    N_LOCAL: tl.constexpr,
    TOPK: tl.constexpr,
    BH: tl.constexpr,
):
    t = tl.program_id(0)
    cols = tl.program_id(1) * BH + tl.arange(0, BH)
    cmask = cols < H
    slot = tl.arange(0, TOPK)
    local = tl.load(experts_ptr + t * TOPK + slot) - offset
    is_local = (local >= 0) & (local < N_LOCAL)
    pos = tl.load(inv_ptr + t * TOPK + slot, mask=is_local, other=0)
    vals = tl.load(
        y_ptr + pos[:, None].to(tl.int64) * stride_y + cols[None, :],
        mask=is_local[:, None] & cmask[None, :],
        other=0.0,
    )
    tl.store(out_ptr + t.to(tl.int64) * stride_out + cols, tl.sum(vals, axis=0).to(tl.bfloat16), mask=cmask)


# ---- host side ------------------------------------------------------------------------------

# Block shapes by T (a shape, so the same kernels run on every call of a workload).
# bm: rows per tile; bn1: intermediate columns per GEMM1 program (it loads 2*bn1 weight rows:
# up and gate); bn2: hidden columns per GEMM2 program; bk: K per step (divides the 128 block);
# per_sm: cap on programs per SM before programs loop over several row tiles. With bk=128 the
# medium and large GEMM1 spill registers on sm_90 (two accumulators plus the dequantized tiles);
# bk=64 does not (ptxas report, Triton 3.6).
# dot: operand dtype of the tensor-core dots ("bf16" or "fp32", which Triton runs as tf32 on a GPU).
CONFIGS = {
    "small": dict(bm=16, bn1=32, bn2=64, bk=128, w1=4, s1=4, w2=4, s2=4, per_sm=8, dot="bf16"),
    "medium": dict(bm=64, bn1=64, bn2=128, bk=64, w1=4, s1=4, w2=4, s2=4, per_sm=4, dot="bf16"),
    "large": dict(bm=128, bn1=64, bn2=128, bk=64, w1=8, s1=4, w2=8, s2=4, per_sm=2, dot="bf16"),
}
_DOT = {"bf16": (tl.bfloat16, torch.bfloat16), "fp32": (tl.float32, torch.float32)}
_SM_COUNT = {}


def _config(n_tokens: int) -> dict:
    if n_tokens <= 128:
        return CONFIGS["small"]
    if n_tokens <= 2048:
        return CONFIGS["medium"]
    return CONFIGS["large"]


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # Triton's interpreter: any cap will do
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in _SM_COUNT:
        _SM_COUNT[key] = torch.cuda.get_device_properties(key).multi_processor_count
    return _SM_COUNT[key]


def _row_tile_bound(max_pairs: int, n_local: int, bm: int) -> int:
    """Most row tiles any routing can need: sum over experts of ceil(rows_e / bm)."""
    busy = min(n_local, max_pairs)
    return max(1, (max_pairs + busy * (bm - 1)) // bm)


def _grid_m(max_pairs: int, n_local: int, bm: int, n_tiles: int, device, per_sm: int) -> int:
    """Row-tile programs per column tile: the worst case, capped near per_sm programs per SM."""
    cap = max(1, triton.cdiv(per_sm * _sm_count(device), n_tiles))
    return min(_row_tile_bound(max_pairs, n_local, bm), cap)


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
    """The solution: tiles from the table (`run_with` takes them explicitly)."""
    return run_with(
        _config(hidden_states.shape[0]), routing_logits, routing_bias, hidden_states, hidden_states_scale,
        gemm1_weights, gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset,
        routed_scaling_factor, output,
    )  # fmt: skip


@torch.no_grad()
def run_with(
    cfg,
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
    """`run` with an explicit tile config (an entry of CONFIGS, or a sweep's own dict)."""
    n_tokens, hidden = hidden_states.shape
    n_local, gemm1_out, _ = gemm1_weights.shape
    inter = gemm1_out // 2
    dev = hidden_states.device
    if n_tokens == 0:
        return
    bm, bn1, bn2, bk = cfg["bm"], cfg["bn1"], cfg["bn2"], cfg["bk"]
    # Triton's CPU interpreter (3.6) multiplies bf16 dot operands as their raw uint16 bits, so off
    # a GPU the dots take fp32 operands (and C is kept in fp32); same kernels, one constexpr apart.
    dot_tl, c_dtype = _DOT[cfg["dot"] if dev.type == "cuda" else "fp32"]
    assert hidden % bk == 0 and inter % bk == 0 and BLOCK % bk == 0
    assert inter % bn1 == 0 and hidden % bn2 == 0 and BLOCK % bn1 == 0 and BLOCK % bn2 == 0

    # 1-2: route every token (torch, the reference's code) and sort the pairs by expert.
    experts, weights = route(routing_logits, routing_bias, routed_scaling_factor)
    experts, weights = experts.contiguous(), weights.contiguous()  # top-k slices are strided views
    top_k = experts.shape[1]
    offset = int(local_expert_offset)
    sorted_ids, order = torch.sort(experts.view(-1), stable=True)
    wanted = torch.arange(offset, offset + n_local + 1, device=dev, dtype=sorted_ids.dtype)
    bounds = torch.searchsorted(sorted_ids, wanted)

    n_pairs = n_tokens * top_k
    max_pairs = n_tokens * min(top_k, n_local)  # local pairs, at most
    c = torch.empty(n_pairs, inter, dtype=c_dtype, device=dev)  # bf16: GEMM2's operand dtype
    y = torch.empty(n_pairs, hidden, dtype=torch.float32, device=dev)
    inv = torch.empty(n_pairs, dtype=torch.int32, device=dev)
    nl_pow2 = triton.next_power_of_2(n_local)

    # 3: GEMM1 + SwiGLU, one grouped launch.
    n1 = inter // bn1
    gm1 = _grid_m(max_pairs, n_local, bm, n1, dev, cfg["per_sm"])
    _gemm1_swiglu[(n1 * gm1,)](
        hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale, order, bounds, c, inv,
        hidden_states.stride(0), hidden_states_scale.stride(0),
        gemm1_weights.stride(0), gemm1_weights.stride(1),
        gemm1_weights_scale.stride(0), gemm1_weights_scale.stride(1),
        c.stride(0), gm1,
        H=hidden, INTER=inter, N_LOCAL=n_local, NL_POW2=nl_pow2, TOPK=top_k, SB=BLOCK, BM=bm, BN=bn1, BK=bk, DOT=dot_tl,
        num_warps=cfg["w1"], num_stages=cfg["s1"],
    )  # fmt: skip

    # 4: GEMM2 times the routing weight, one grouped launch.
    n2 = hidden // bn2
    gm2 = _grid_m(max_pairs, n_local, bm, n2, dev, cfg["per_sm"])
    _gemm2[(n2 * gm2,)](
        c, gemm2_weights, gemm2_weights_scale, order, bounds, weights.view(-1), y,
        c.stride(0), gemm2_weights.stride(0), gemm2_weights.stride(1),
        gemm2_weights_scale.stride(0), gemm2_weights_scale.stride(1),
        y.stride(0), gm2,
        H=hidden, INTER=inter, N_LOCAL=n_local, NL_POW2=nl_pow2, SB=BLOCK, BM=bm, BN=bn2, BK=bk, DOT=dot_tl,
        num_warps=cfg["w2"], num_stages=cfg["s2"],
    )  # fmt: skip

    # 5: every output row: the sum of its token's local pairs, or zeros.
    bh = min(1024, triton.next_power_of_2(hidden))
    _combine[(n_tokens, triton.cdiv(hidden, bh))](
        y, inv, experts, output,
        hidden, offset, y.stride(0), output.stride(0),
        N_LOCAL=n_local, TOPK=top_k, BH=bh, num_warps=4,
    )  # fmt: skip
