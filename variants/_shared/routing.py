"""DeepSeek-V3 "no-aux" routing inside Triton kernels, bit-identical to the reference: shared by the
Triton rungs.

`route_tokens` routes a block of tokens in registers (a GEMM kernel can run it itself at tiny T);
`zero_rows` writes the exact zero output rows of tokens with no local expert, and `zero_sum_rows` (beyond
the API first agreed for rung 4) zeroes the fp32 rows an atomic reduction sums into; `route_kernel` is
the stand-alone routing launch (expert ids and weights to memory, optionally both kinds of zero rows);
`route` is the host entry the harness calls to measure routing agreement (any rung's entry module
re-exports it).
"""

import torch
import triton
import triton.language as tl

from .exact import INTERPRET

try:  # precise expf, as torch's sigmoid uses on CUDA; unusable under the interpreter
    from triton.language.extra import libdevice
except Exception:  # pragma: no cover
    libdevice = None

N_GROUP = 8  # expert groups
TOPK_GROUP = 4  # groups kept
TOP_K = 8  # experts per token


def use_libdevice(device) -> bool:
    """Whether kernels on `device` can call libdevice's precise expf (a GPU, not the interpreter)."""
    return (not INTERPRET) and libdevice is not None and device.type == "cuda"


@triton.jit
def route_tokens(logits_ptr, bias_ptr, t, tmask, rsf, E: tl.constexpr, NG: tl.constexpr, KG: tl.constexpr,
                 TOPK: tl.constexpr, BT: tl.constexpr, USE_LIBDEVICE: tl.constexpr):  # fmt: skip
    """Routing of the tokens `t` ([BT]): ([BT, TOPK] global expert ids, [BT, TOPK] weights), as the
    reference: sigmoid, + bias, top-KG groups by their top-2 sums, top-TOPK experts, ties to the lower
    index, weights = s / sum(s) * rsf over all TOPK selected experts."""
    EG: tl.constexpr = E // NG
    e = tl.arange(0, E)
    x = tl.load(logits_ptr + t[:, None] * E + e[None, :], mask=tmask[:, None], other=0.0)
    # s = 1 / (1 + expf(-x)) with precise expf and IEEE division: what torch.sigmoid computes on CUDA.
    if USE_LIBDEVICE:
        ex = libdevice.exp(-x)
    else:
        ex = tl.exp(-x)
    s = tl.math.div_rn(tl.full((BT, E), 1.0, tl.float32), 1.0 + ex)
    sb = s + tl.load(bias_ptr + e).to(tl.float32)[None, :]

    # group score = sum of the group's two largest sb (the second: the max without the FIRST max)
    sb3 = tl.reshape(sb, (BT, NG, EG))
    j3 = tl.arange(0, EG)[None, None, :]
    m1 = tl.max(sb3, axis=2)
    first = tl.min(tl.where(sb3 == m1[:, :, None], j3, EG), axis=2)
    m2 = tl.max(tl.where(j3 == first[:, :, None], float("-inf"), sb3), axis=2)
    gs = m1 + m2

    # top-KG groups; equal scores go to the lower group index
    g = tl.arange(0, NG)[None, :]
    keep = tl.zeros((BT, NG), tl.int32)
    for _ in tl.static_range(KG):
        mx = tl.max(gs, axis=1)
        gi = tl.min(tl.where(gs == mx[:, None], g, NG), axis=1)
        hit = g == gi[:, None]
        keep = tl.where(hit, 1, keep)
        gs = tl.where(hit, float("-inf"), gs)
    cand = tl.reshape(tl.where(keep[:, :, None] != 0, sb3, float("-inf")), (BT, E))

    # top-TOPK experts among the kept groups; equal values go to the lower expert index
    k8 = tl.arange(0, TOPK)[None, :]
    ids = tl.zeros((BT, TOPK), tl.int32)
    ssel = tl.zeros((BT, TOPK), tl.float32)
    for k in tl.static_range(TOPK):
        mx = tl.max(cand, axis=1)
        ei = tl.min(tl.where(cand == mx[:, None], e[None, :], E), axis=1)
        hit = e[None, :] == ei[:, None]
        sk = tl.sum(tl.where(hit, s, 0.0), axis=1)
        cand = tl.where(hit, float("-inf"), cand)
        ids = tl.where(k8 == k, ei[:, None], ids)
        ssel = tl.where(k8 == k, sk[:, None], ssel)
    ssum = tl.sum(ssel, axis=1)
    w = tl.math.div_rn(ssel, ssum[:, None] + 1e-20) * rsf
    return ids, w


@triton.jit
def zero_rows(ids, t, zmask, out_ptr, local_off, NL: tl.constexpr, H: tl.constexpr, BT: tl.constexpr):
    """Exact zero bf16 output rows for the tokens (of `t`, where zmask) whose expert ids `ids`
    ([BT, TOPK]) hold no local expert: no GEMM writes those rows."""
    loc = ids - local_off
    nloc = tl.sum(((loc >= 0) & (loc < NL)).to(tl.int32), axis=1)
    zm = zmask & (nloc == 0)
    hb = tl.arange(0, 1024)
    for h0 in tl.static_range(0, H, 1024):
        hh = h0 + hb
        offs = t.to(tl.int64)[:, None] * H + hh[None, :]
        tl.store(out_ptr + offs, tl.zeros((BT, 1024), tl.bfloat16), mask=zm[:, None] & (hh < H)[None, :])


@triton.jit
def zero_sum_rows(ids, t, zmask, sum_ptr, local_off, NL: tl.constexpr, H: tl.constexpr, BT: tl.constexpr):
    """Zero fp32 rows of `sum_ptr` ([T, H]) for the tokens with several local experts, whose rows a
    GEMM then sums there with atomics."""
    loc = ids - local_off
    nloc = tl.sum(((loc >= 0) & (loc < NL)).to(tl.int32), axis=1)
    sm = zmask & (nloc > 1)
    hb = tl.arange(0, 1024)
    for h0 in tl.static_range(0, H, 1024):
        hh = h0 + hb
        offs = t.to(tl.int64)[:, None] * H + hh[None, :]
        tl.store(sum_ptr + offs, tl.zeros((BT, 1024), tl.float32), mask=sm[:, None] & (hh < H)[None, :])


@triton.jit(do_not_specialize=["T", "local_off"])
def route_kernel(
    logits_ptr,
    bias_ptr,
    ids_ptr,
    w_ptr,
    out_ptr,
    sum_ptr,
    T,
    local_off,
    rsf,
    E: tl.constexpr,
    NL: tl.constexpr,
    H: tl.constexpr,
    NG: tl.constexpr,
    KG: tl.constexpr,
    TOPK: tl.constexpr,
    BT: tl.constexpr,
    USE_LIBDEVICE: tl.constexpr,
    WRITE_ZEROS: tl.constexpr,
    ZERO_SUMS: tl.constexpr,
):
    """BT tokens a program: their expert ids and weights ([T, TOPK] each); WRITE_ZEROS: the zero output
    rows of tokens with no local expert; ZERO_SUMS: zero `sum_ptr` rows for an atomic reduction."""
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    tmask = t < T
    ids, w = route_tokens(logits_ptr, bias_ptr, t, tmask, rsf, E, NG, KG, TOPK, BT, USE_LIBDEVICE)
    out_off = t[:, None] * TOPK + tl.arange(0, TOPK)[None, :]
    tl.store(ids_ptr + out_off, ids, mask=tmask[:, None])
    tl.store(w_ptr + out_off, w, mask=tmask[:, None])
    if WRITE_ZEROS:
        zero_rows(ids, t, tmask, out_ptr, local_off, NL, H, BT)
    if ZERO_SUMS:
        zero_sum_rows(ids, t, tmask, sum_ptr, local_off, NL, H, BT)


def route(routing_logits, routing_bias, routed_scaling_factor):
    """The routing kernel alone: ([T, 8] int64 global expert ids, [T, 8] fp32 weights)."""
    T, E = routing_logits.shape
    ids = torch.empty(T, TOP_K, dtype=torch.int32, device=routing_logits.device)
    w = torch.empty(T, TOP_K, dtype=torch.float32, device=routing_logits.device)
    if T == 0:
        return ids.long(), w
    bt = 1 if T <= 128 else 16  # one token a program at small T, as the rungs' own routing
    route_kernel[(triton.cdiv(T, bt),)](
        routing_logits, routing_bias, ids, w, w, w, T, 0, float(routed_scaling_factor),
        E=E, NL=1, H=1, NG=N_GROUP, KG=TOPK_GROUP, TOPK=TOP_K, BT=bt,
        USE_LIBDEVICE=use_libdevice(routing_logits.device), WRITE_ZEROS=False, ZERO_SUMS=False,
        num_warps=1 if bt == 1 else 8,
    )  # fmt: skip
    return ids.long(), w
