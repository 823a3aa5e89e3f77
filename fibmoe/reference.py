"""Reference for the FP8 block-scale DeepSeek-V3 MoE layer (one EP rank), written from TRACK_A.md.

This file is self-contained (torch only): its source is embedded verbatim as the `reference`
field of our flashinfer-bench definitions, where it is imported as `main.py::run`.

Geometry comes from the tensors, so the same code serves the contest definition
(256 experts, 32 local, H=7168, I=2048) and the small CPU definition. Only experts that some
token selected are dequantized, so contest-shaped inputs with a few tokens stay cheap on a CPU.
"""

import torch

BLOCK = 128  # FP8 block-scale granularity along every scaled axis
N_GROUP = 8  # expert groups
TOPK_GROUP = 4  # groups kept per token
TOP_K = 8  # experts kept per token


def topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values along the last axis; equal values go to the lower index.

    This is what torch.topk does on CUDA (it gathers the boundary's ties in index order), written
    so that it holds on every device: torch.topk on a CPU breaks ties in no fixed order.
    """
    return torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]


def route(routing_logits: torch.Tensor, routing_bias: torch.Tensor, routed_scaling_factor: float):
    """DeepSeek-V3 no-aux routing over all experts: ([T, 8] global expert ids, [T, 8] fp32 weights)."""
    n_tokens, n_experts = routing_logits.shape
    s = torch.sigmoid(routing_logits.float())
    sb = s + routing_bias.float()
    grouped = sb.view(n_tokens, N_GROUP, n_experts // N_GROUP)
    group_score = grouped.topk(2, dim=-1).values.sum(-1)  # values only: ties cannot matter
    kept_groups = topk_indices(group_score, TOPK_GROUP)
    in_kept_group = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, kept_groups, True)
    candidates = sb.masked_fill(~in_kept_group.repeat_interleave(n_experts // N_GROUP, 1), float("-inf"))
    experts = topk_indices(candidates, TOP_K)
    s_sel = s.gather(1, experts)
    weights = s_sel / (s_sel.sum(1, keepdim=True) + 1e-20) * routed_scaling_factor
    return experts, weights


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[N, K] fp8 times its [N/128, K/128] block scales, in fp32."""
    n, k = q.shape
    blocks = q.float().view(n // BLOCK, BLOCK, k // BLOCK, BLOCK)
    return (blocks * scale.float()[:, None, :, None]).view(n, k)


def dequantize_activations(hidden_states: torch.Tensor, hidden_states_scale: torch.Tensor) -> torch.Tensor:
    """[T, H] fp8 activations times their block-major [H/128, T] scales, in fp32."""
    n_tokens, hidden = hidden_states.shape
    # hidden_states_scale is block-major [H/128, T]: transpose before broadcasting over a block.
    blocks = hidden_states.float().view(n_tokens, hidden // BLOCK, BLOCK) * hidden_states_scale.float().t()[:, :, None]
    return blocks.view(n_tokens, hidden)


def expert(x, w1, w1_scale, w2, w2_scale) -> torch.Tensor:
    """One expert on its [rows, H] fp32 activations: GEMM1 -> SwiGLU -> GEMM2, in fp32 ([rows, H])."""
    inter = w1.shape[0] // 2
    g1 = x @ dequantize(w1, w1_scale).t()
    c = torch.nn.functional.silu(g1[:, inter:]) * g1[:, :inter]  # silu on the SECOND half
    return c @ dequantize(w2, w2_scale).t()


@torch.no_grad()
def forward(
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
):
    x = dequantize_activations(hidden_states, hidden_states_scale)
    experts, weights = route(routing_logits, routing_bias, routed_scaling_factor)
    local = experts - int(local_expert_offset)
    n_local = gemm1_weights.shape[0]

    out = torch.zeros_like(x)
    for e in torch.unique(local[(local >= 0) & (local < n_local)]).tolist():
        hit = local == e  # [T, 8]; a token selects an expert at most once
        tokens = hit.any(1).nonzero().squeeze(1)
        w_tok = (weights * hit).sum(1)[tokens]
        o = expert(x[tokens], gemm1_weights[e], gemm1_weights_scale[e], gemm2_weights[e], gemm2_weights_scale[e])
        out.index_add_(0, tokens, o * w_tok[:, None])
    return out


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
):
    """The definition's entry: the fp32 result of `forward`, cast to bf16 at the end."""
    return forward(
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
    ).to(torch.bfloat16)
