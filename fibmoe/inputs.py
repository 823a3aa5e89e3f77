"""Fresh inputs for one trial of a workload, in the definition's positional order.

Two styles:
- `contest`: exactly as flashinfer-bench draws them (its own `gen_inputs`): fp8 tensors are
  randn clamped to [-2, 2]; every fp32 tensor, the three scale tensors included, is plain randn
  (signed, not powers of two).
- `quantized`: realistic data: bf16 activations and weights (weights scaled by 1/sqrt(K)) quantized
  to FP8 per 128-block with positive scales amax/448, as a real checkpoint and a real
  activation quantizer produce them.
"""

from __future__ import annotations

import torch

from .errors import FibmoeError
from .geometry import BLOCK

STYLES = ("contest", "quantized")
FP8_MAX = 448.0


def generate(dataset, trace, device: str, style: str = "contest", routing=None) -> list:
    """One trial's inputs; `routing` (the stored routing tensors) may be passed to skip reloading."""
    from flashinfer_bench.bench.utils import gen_inputs

    from .dataset import routing_tensors

    if style not in STYLES:
        raise FibmoeError(f"unknown input style {style!r} (choose from {', '.join(STYLES)})")
    routing = routing if routing is not None else routing_tensors(dataset, trace)
    if style == "contest":
        return gen_inputs(dataset.definition, trace.workload, device=device, safe_tensors=routing)

    axes = dataset.definition.const_axes
    n_tokens = trace.workload.axes["seq_len"]
    hidden, inter, n_local = axes["hidden_size"], axes["intermediate_size"], axes["num_local_experts"]
    values = {name: trace.workload.inputs[name].value for name in ("local_expert_offset", "routed_scaling_factor")}
    hs, hs_scale = quantize_activations(torch.randn(n_tokens, hidden, device=device))
    w1, w1_scale = quantize_weights(torch.randn(n_local, 2 * inter, hidden, device=device) / hidden**0.5)
    w2, w2_scale = quantize_weights(torch.randn(n_local, hidden, inter, device=device) / inter**0.5)
    return [
        routing["routing_logits"].to(device),
        routing["routing_bias"].to(device),
        hs,
        hs_scale,
        w1,
        w1_scale,
        w2,
        w2_scale,
        values["local_expert_offset"],
        values["routed_scaling_factor"],
    ]


def quantize_activations(x: torch.Tensor):
    """[T, H] -> fp8 [T, H] and block-major scales [H/128, T] (scale = block amax / 448)."""
    n, k = x.shape
    blocks = x.to(torch.bfloat16).float().view(n, k // BLOCK, BLOCK)
    scale = blocks.abs().amax(-1).clamp_min(1e-12) / FP8_MAX
    q = (blocks / scale[..., None]).to(torch.float8_e4m3fn).view(n, k)
    return q, scale.t().contiguous()


def quantize_weights(w: torch.Tensor):
    """[E, N, K] -> fp8 [E, N, K] and scales [E, N/128, K/128], one per 128x128 block."""
    e, n, k = w.shape
    q = torch.empty(e, n, k, dtype=torch.float8_e4m3fn, device=w.device)
    scale = torch.empty(e, n // BLOCK, k // BLOCK, dtype=torch.float32, device=w.device)
    for i in range(e):  # one expert at a time keeps the fp32 temporaries small at contest size
        blocks = w[i].to(torch.bfloat16).float().view(n // BLOCK, BLOCK, k // BLOCK, BLOCK)
        s = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-12) / FP8_MAX
        q[i] = (blocks / s[:, None, :, None]).to(torch.float8_e4m3fn).view(n, k)
        scale[i] = s
    return q, scale
