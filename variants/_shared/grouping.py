"""Grouping of (token, slot) pairs by local expert in vectorized PyTorch, shared by the rungs that
do not fuse it into a kernel of their own; packed next to each such rung's sources.

Nothing here synchronizes with the host: counts and bounds stay on the device.
"""

import torch


def group_by_local_expert(experts, weights, local_expert_offset: int, n_local: int):
    """Sort the flattened (token, slot) pairs by local expert.

    experts, weights: [T, K] global expert ids and routing weights.
    Returns (token [T*K] int64, weight [T*K] fp32, bounds [n_local + 1] int64): the pairs of local
    expert e are positions bounds[e]:bounds[e+1]; pairs of other ranks' experts sort past bounds[-1].
    """
    top_k = experts.shape[1]
    local = experts.flatten() - local_expert_offset
    local = torch.where((local >= 0) & (local < n_local), local, n_local)
    sorted_local, order = torch.sort(local, stable=True)
    # searchsorted, not bincount: bincount reads its size back to the host on CUDA (a sync)
    bounds = torch.searchsorted(sorted_local, torch.arange(n_local + 1, device=experts.device))
    return torch.div(order, top_k, rounding_mode="floor"), weights.flatten()[order], bounds
