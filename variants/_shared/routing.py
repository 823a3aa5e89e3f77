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
NO_KEY: tl.constexpr = tl.constexpr(-(2**62))  # below every `_ranked` key (they lie within +-2**41)


def use_libdevice(device) -> bool:
    """Whether kernels on `device` can call libdevice's precise expf (a GPU, not the interpreter)."""
    return (not INTERPRET) and libdevice is not None and device.type == "cuda"


@triton.jit
def _sigmoid(x, USE_LIBDEVICE: tl.constexpr):
    """1 / (1 + expf(-x)) with precise expf and IEEE division: what torch.sigmoid computes on CUDA."""
    if USE_LIBDEVICE:
        ex = libdevice.exp(-x)
    else:
        ex = tl.exp(-x)
    return tl.math.div_rn(tl.full(x.shape, 1.0, tl.float32), 1.0 + ex)


@triton.jit
def _ranked(v, i, N: tl.constexpr):
    """int64 keys that order like (v, then the LOWER index i first): one max finds the largest v and,
    among equal v, the lowest i. v is fp32 without NaN or -0.0 (its bits, made monotonic); N, the
    number of indices, a power of two."""
    b = v.to(tl.int32, bitcast=True)
    return tl.where(b >= 0, b, b ^ 0x7FFFFFFF).to(tl.int64) * N + (N - 1 - i)


@triton.jit
def _value(key, N: tl.constexpr):
    """The fp32 value of a `_ranked` key (bit-exact)."""
    m = ((key - (key & (N - 1))) // N).to(tl.int32)  # the index bits off first: an exact division
    return tl.where(m >= 0, m, m ^ 0x7FFFFFFF).to(tl.float32, bitcast=True)


@triton.jit
def route_tokens(logits_ptr, bias_ptr, t, tmask, rsf, E: tl.constexpr, NG: tl.constexpr, KG: tl.constexpr,
                 TOPK: tl.constexpr, BT: tl.constexpr, USE_LIBDEVICE: tl.constexpr):  # fmt: skip
    """Routing of the tokens `t` ([BT]): ([BT, TOPK] global expert ids, [BT, TOPK] weights), as the
    reference: sigmoid, + bias, top-KG groups by their top-2 sums, top-TOPK experts, ties to the lower
    index, weights = s / sum(s) * rsf over all TOPK selected experts. Every top-k step is one max over
    `_ranked` keys (value and index in one int64), 14 reductions in all for the contest's shape."""
    EG: tl.constexpr = E // NG
    e = tl.arange(0, E)
    x = tl.load(logits_ptr + t[:, None] * E + e[None, :], mask=tmask[:, None], other=0.0)
    sb = _sigmoid(x, USE_LIBDEVICE) + tl.load(bias_ptr + e).to(tl.float32)[None, :]
    key = _ranked(sb, e[None, :], E)

    # group score = sum of the group's two largest sb (the second: the max without the FIRST max)
    key3 = tl.reshape(key, (BT, NG, EG))
    k1 = tl.max(key3, axis=2)
    k2 = tl.max(tl.where(key3 == k1[:, :, None], NO_KEY, key3), axis=2)
    g = tl.arange(0, NG)[None, :]
    gkey = _ranked(_value(k1, E) + _value(k2, E), g, NG)

    # top-KG groups; equal scores go to the lower group index
    keep = tl.zeros((BT, NG), tl.int32)
    for _ in tl.static_range(KG):
        hit = gkey == tl.max(gkey, axis=1)[:, None]
        keep = tl.where(hit, 1, keep)
        gkey = tl.where(hit, NO_KEY, gkey)
    cand = tl.reshape(tl.where(keep[:, :, None] != 0, key3, NO_KEY), (BT, E))

    # top-TOPK experts among the kept groups; equal values go to the lower expert index
    k8 = tl.arange(0, TOPK)[None, :]
    ids = tl.zeros((BT, TOPK), tl.int32)
    for k in tl.static_range(TOPK):
        mx = tl.max(cand, axis=1)
        ids = tl.where(k8 == k, (E - 1 - (mx & (E - 1))).to(tl.int32)[:, None], ids)
        cand = tl.where(cand == mx[:, None], NO_KEY, cand)
    # the picked experts' sigmoids, recomputed from their logits: the same bits as s
    xsel = tl.load(logits_ptr + t[:, None] * E + ids, mask=tmask[:, None], other=0.0)
    ssel = _sigmoid(xsel, USE_LIBDEVICE)
    ssum = tl.sum(ssel, axis=1)
    w = tl.math.div_rn(ssel, ssum[:, None] + 1e-20) * rsf
    return ids, w


@triton.jit
def local_experts(loc, NL: tl.constexpr):
    """How many of each token's experts are local ([BT]), from its local expert indices `loc` ([BT, TOPK]:
    expert id minus the local offset, so out of [0, NL) where not local)."""
    return tl.sum(((loc >= 0) & (loc < NL)).to(tl.int32), axis=1)


@triton.jit
def zero_rows(ids, t, zmask, out_ptr, local_off, NL: tl.constexpr, H: tl.constexpr, BT: tl.constexpr):
    """Exact zero bf16 output rows for the tokens (of `t`, where zmask) whose expert ids `ids`
    ([BT, TOPK]) hold no local expert: no GEMM writes those rows."""
    zm = zmask & (local_experts(ids - local_off, NL) == 0)
    hb = tl.arange(0, 1024)
    for h0 in tl.static_range(0, H, 1024):
        hh = h0 + hb
        offs = t.to(tl.int64)[:, None] * H + hh[None, :]
        tl.store(out_ptr + offs, tl.zeros((BT, 1024), tl.bfloat16), mask=zm[:, None] & (hh < H)[None, :])


@triton.jit
def zero_sum_rows(ids, t, zmask, sum_ptr, local_off, NL: tl.constexpr, H: tl.constexpr, BT: tl.constexpr):
    """Zero fp32 rows of `sum_ptr` ([T, H]) for the tokens with several local experts, whose rows a
    GEMM then sums there with atomics."""
    sm = zmask & (local_experts(ids - local_off, NL) > 1)
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
