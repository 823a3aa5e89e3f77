"""The finalize launch: output rows of tokens with several local experts.

GEMM2 writes the bf16 output row of a token with one local expert itself and parks the rows of a token
with several at their (token, slot) index (fp32, or bf16 with `bf16_partial_rows`), or, with
`atomic_reduction`, adds them into one fp32 row per token. This kernel sums each such token's rows in
fp32 in slot order (deterministic) and writes its bf16 row.
"""

import triton
import triton.language as tl

from .exact import round_to_bf16
from .launch import Kernel, gdc_wait
from .routing import local_experts


@triton.jit(do_not_specialize=["T", "local_off"])
def finalize_kernel(
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
    need = tm & (local_experts(loc, NL) > 1)
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


def launch_for(ws) -> Kernel:
    t = ws.tiles
    return Kernel(
        finalize_kernel, (triton.cdiv(ws.T, t.finalize_block_t), triton.cdiv(ws.H, t.finalize_block_h)),
        dict(NL=ws.NL, H=ws.H, TOPK=ws.TOPK, BT=t.finalize_block_t, BH=t.finalize_block_h,
             ATOMIC=t.atomic_reduction, EXACT=ws.exact, PDL=ws.pdl, OBUF_BF16=t.bf16_partial_rows),
        num_warps=4, **ws.pdl_launch,
    )  # fmt: skip
