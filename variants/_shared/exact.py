"""Exact fp32 -> e4m3 / bf16 rounding inside Triton kernels, for Triton's CPU interpreter.

Under TRITON_INTERPRET=1 (CPU) Triton converts fp32 -> fp8e4nv wrongly where rounding crosses a power
of two and fp32 -> bf16 by truncation. Kernels that take an EXACT constexpr (set from `INTERPRET`)
first round the fp32 value to the target grid with these helpers (round-to-nearest-even, in exact
fp32 / integer arithmetic), so that the cast only converts a representable value. On a GPU the
hardware casts are right and the helpers are compiled out.
"""

import os

import triton
import triton.language as tl

# Whether Triton runs kernels in its CPU interpreter (it reads the same variable once, at import).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def round_to_e4m3(q):
    """Round fp32 q (|q| <= 448) to the nearest e4m3 value, ties to even, in exact fp32 arithmetic."""
    bits = q.to(tl.int32, bitcast=True)
    ex = ((bits >> 23) & 0xFF) - 127
    ue = tl.maximum(ex, -6) - 3  # exponent of one e4m3 ulp at |q| (subnormals below 2^-6)
    inv_ulp = ((127 - ue) << 23).to(tl.float32, bitcast=True)
    ulp = ((127 + ue) << 23).to(tl.float32, bitcast=True)
    y = q * inv_ulp  # exact: a power-of-two scaling, |y| < 16
    r = (y + 12582912.0) - 12582912.0  # 1.5 * 2^23: rounds |y| < 2^22 to an integer, ties to even
    return r * ulp


@triton.jit
def round_to_bf16(x):
    """Round fp32 x to the nearest bf16 value (ties to even), as an fp32 value; finite x only."""
    bits = x.to(tl.int32, bitcast=True)
    r = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536
    return r.to(tl.float32, bitcast=True)
