"""FP8 re-quantization of the intermediate C = silu(gate) * up inside a GEMM1 epilogue: shared by the
Triton rungs.

C is stored as NT = 1 or 2 FP8 terms per row per 128 columns, each with one fp32 scale (amax / 448):
hi = fp8(C / s_hi) and, with NT = 2, lo = fp8((C - hi * s_hi) / s_lo), so that C ~ hi * s_hi + lo * s_lo
to ~2^-9 of the block's amax (rel-L2 error of the layer ~2e-3; hi alone ~2.3e-2).
Layout: C row `rid` holds, per 128-column block jb, NT runs of 128 fp8 values (hi, then lo) at
rid * NT * I + jb * NT * 128; its scales at cs[rid, jb, 0..NT-1].
"""

import triton
import triton.language as tl

from .exact import round_to_e4m3
from .launch import FP8_MAX


@triton.jit
def quant_block(c, EXACT: tl.constexpr, SWAP: tl.constexpr):
    """fp8 values (as fp32, clamped; rounded to the e4m3 grid when EXACT) and scales (amax / 448, 0 for
    an all-zero row) of the 128-column row blocks of c. SWAP: c is [BJ, BM] (rows on axis 1)."""
    if SWAP:
        amax = tl.max(tl.abs(c), axis=0)  # [BM]
        scale = amax / FP8_MAX
        q = c / tl.where(amax > 0, scale, 1.0)[None, :]  # an all-zero row stays zero, scale 0
    else:
        amax = tl.max(tl.abs(c), axis=1)  # [BM]
        scale = amax / FP8_MAX
        q = c / tl.where(amax > 0, scale, 1.0)[:, None]
    q = tl.minimum(tl.maximum(q, -FP8_MAX), FP8_MAX)
    if EXACT:
        q = round_to_e4m3(q)
    return q, scale


@triton.jit
def swiglu_quant_store(up, gate, rid, rmask, jb, cq_ptr, cs_ptr, I: tl.constexpr, BJ: tl.constexpr,
                       EXACT: tl.constexpr, SWAP: tl.constexpr, NT: tl.constexpr):  # fmt: skip
    """C = silu(gate) * up for column block jb of rows `rid` (where rmask), stored as NT fp8 terms with
    their scales (module docstring). SWAP: up, gate are [BJ, BM] tiles of G1^T (columns x rows); else
    [BM, BJ] tiles of G1."""
    c = gate / (1.0 + tl.exp(-gate)) * up
    jn = tl.arange(0, BJ)
    q, scale = quant_block(c, EXACT, SWAP)
    q8 = q.to(tl.float8e4nv)
    if SWAP:
        offs = rid.to(tl.int64)[None, :] * (NT * I) + (jb * (NT * BJ) + jn)[:, None]
        smask = rmask[None, :]
    else:
        offs = rid.to(tl.int64)[:, None] * (NT * I) + (jb * (NT * BJ) + jn)[None, :]
        smask = rmask[:, None]
    tl.store(cq_ptr + offs, q8, mask=smask)
    s_offs = rid * (NT * (I // BJ)) + jb * NT
    tl.store(cs_ptr + s_offs, scale, mask=rmask)
    if NT == 2:
        # the residual of the fp8 hi term, in fp32 (q is on the e4m3 grid: q8 converts it exactly)
        if SWAP:
            r = c - q8.to(tl.float32) * scale[None, :]
        else:
            r = c - q8.to(tl.float32) * scale[:, None]
        ql, scale_lo = quant_block(r, EXACT, SWAP)
        tl.store(cq_ptr + offs + BJ, ql.to(tl.float8e4nv), mask=smask)
        tl.store(cs_ptr + s_offs + 1, scale_lo, mask=rmask)
