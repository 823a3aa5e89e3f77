"""A single-file candidate for `fibmoe eval`: the DeepSeek-V3 FP8 block-scale MoE layer (one EP rank) in
plain PyTorch, destination-passing style (the harness hands `output` in as the 11th argument).

`fibmoe eval initial_program.py` packs this file alone as a python variant (a triton one if it imports
triton) with entry `initial_program.py::run`. OpenEvolve rewrites what lies between the EVOLVE-BLOCK
markers. Sizes come from the tensors, so the same file runs the contest definition and the small one.

It is a copy, on purpose, of the math in fibmoe/reference.py (routing, block dequantization, the expert's
GEMM1 -> SwiGLU -> GEMM2), written out compactly: OpenEvolve evolves one self-contained file, so the seed can
import nothing of ours; `fibmoe eval` scores it against that reference, which keeps the two in agreement.
"""

import torch

# EVOLVE-BLOCK-START
BLOCK = 128
N_GROUP, TOPK_GROUP, TOP_K = 8, 4, 8


def _top_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    # Ties go to the lower index, as torch.topk does on CUDA (and as the reference routes).
    return torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]


def _route(logits, bias, scaling):
    t, e = logits.shape
    s = torch.sigmoid(logits.float())
    sb = s + bias.float()
    group_score = sb.view(t, N_GROUP, e // N_GROUP).topk(2, dim=-1).values.sum(-1)
    keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, _top_indices(group_score, TOPK_GROUP), True)
    experts = _top_indices(sb.masked_fill(~keep.repeat_interleave(e // N_GROUP, 1), float("-inf")), TOP_K)
    w = s.gather(1, experts)
    return experts, w / (w.sum(1, keepdim=True) + 1e-20) * scaling


def _dequant(q, scale):
    n, k = q.shape
    return (q.float().view(n // BLOCK, BLOCK, k // BLOCK, BLOCK) * scale[:, None, :, None]).view(n, k)


@torch.no_grad()
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
    t, h = hidden_states.shape
    n_local, two_i, _ = gemm1_weights.shape
    inter = two_i // 2
    x = (hidden_states.float().view(t, h // BLOCK, BLOCK) * hidden_states_scale.t()[:, :, None]).view(t, h)
    experts, weights = _route(routing_logits, routing_bias, routed_scaling_factor)
    local = experts - int(local_expert_offset)
    acc = torch.zeros(t, h, dtype=torch.float32, device=hidden_states.device)
    for e in torch.unique(local[(local >= 0) & (local < n_local)]).tolist():
        hit = local == e
        rows = hit.any(1).nonzero().squeeze(1)
        g1 = x[rows] @ _dequant(gemm1_weights[e], gemm1_weights_scale[e]).t()
        c = torch.nn.functional.silu(g1[:, inter:]) * g1[:, :inter]  # silu of the second half
        o = c @ _dequant(gemm2_weights[e], gemm2_weights_scale[e]).t()
        acc.index_add_(0, rows, o * (weights * hit).sum(1)[rows, None])
    output.copy_(acc.to(torch.bfloat16))  # every element written, zeros included


# EVOLVE-BLOCK-END
