"""Routing facts that only a GPU can confirm: the reference's tie rule is torch.topk's on CUDA."""

import torch

from fibmoe import dataset, reference
from fibmoe.geometry import CONTEST


def test_torch_topk_on_cuda_breaks_ties_toward_the_lower_index():
    gen = torch.Generator(device="cuda").manual_seed(0)
    for k, width in [(8, 128), (8, 256), (4, 8), (2, 32)]:
        x = torch.randint(0, 3, (4096, width), device="cuda", generator=gen).float()  # ties everywhere
        for sorted_ in (True, False):
            got = torch.topk(x, k, dim=-1, sorted=sorted_).indices.sort(-1).values
            want = reference.topk_indices(x, k).sort(-1).values
            assert torch.equal(got, want), (k, width, sorted_)


def _route_with_torch_topk(logits, bias, scale):
    """The routing written with torch.topk everywhere, as the contest's reference is."""
    s = torch.sigmoid(logits.float())
    sb = s + bias.float()
    t, e = sb.shape
    g = sb.view(t, 8, e // 8)
    group = g.topk(2, dim=-1).values.sum(-1)
    keep = torch.zeros_like(group).scatter_(1, group.topk(4, dim=-1, sorted=False).indices, 1.0)
    masked = sb.masked_fill(keep.repeat_interleave(e // 8, 1) == 0, torch.finfo(torch.float32).min)
    idx = masked.topk(8, dim=-1, sorted=False).indices
    return idx


def test_reference_routing_equals_torch_topk_routing_on_cuda_for_every_contest_workload():
    ds = dataset.load(CONTEST.name)
    for w in ds.workloads:
        r = dataset.routing_tensors(ds, w)
        logits, bias = r["routing_logits"].cuda(), r["routing_bias"].cuda()
        ours = reference.route(logits, bias, 2.5)[0].sort(-1).values
        theirs = _route_with_torch_topk(logits, bias, 2.5).sort(-1).values
        assert torch.equal(ours, theirs), w.workload.uuid
