"""Rung 1: vectorized PyTorch MoE (gather -> GEMM1 -> SwiGLU -> GEMM2 -> weighted scatter)."""

import torch

from .grouping import group_by_local_expert
from .reference import dequantize_activations, expert, route


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
    n_local = gemm1_weights.shape[0]
    experts, weights = route(routing_logits, routing_bias, routed_scaling_factor)
    token, weight, bounds = group_by_local_expert(experts, weights, int(local_expert_offset), n_local)
    bounds = bounds.tolist()  # the call's one host sync: which experts have rows, and where

    x = dequantize_activations(hidden_states, hidden_states_scale)
    acc = torch.zeros_like(x)
    for e in range(n_local):
        lo, hi = bounds[e], bounds[e + 1]
        if lo == hi:
            continue  # no fp32 copy of an expert nobody chose
        rows = token[lo:hi]
        o = expert(x[rows], gemm1_weights[e], gemm1_weights_scale[e], gemm2_weights[e], gemm2_weights_scale[e])
        acc.index_add_(0, rows, o * weight[lo:hi, None])
    output.copy_(acc)  # every element, zeros included
