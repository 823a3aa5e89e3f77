"""The reference against an independent float64 computation, and the operator's tricky parts pinned."""

import pytest
import torch

from fibmoe import reference
from fibmoe.geometry import CONTEST, SMALL, Geometry


def make_inputs(g: Geometry, n_tokens: int, offset: int, seed: int = 0, logits=None):
    """Contest-style random inputs (signed, non-power-of-two scales) for geometry g."""
    gen = torch.Generator().manual_seed(seed)
    h, i, e = g.hidden_size, g.intermediate_size, g.num_local_experts

    def fp8(*shape):  # random bytes are much cheaper than randn at contest size; 0x7f/0xff are NaN
        q = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
        return q.masked_fill_((q & 0x7F) == 0x7F, 0).view(torch.float8_e4m3fn)

    def fp8_experts(*shape):  # 4 distinct experts, tiled; their random scales still tell them apart
        return fp8(min(e, 4), *shape).repeat(e // min(e, 4), 1, 1)

    if logits is None:  # shifted toward this rank's experts so that most tokens hit some of them
        logits = torch.randn(n_tokens, g.num_experts, generator=gen) * 0.656 - 1.67
        logits[:, offset : offset + e] += 0.5
        logits = logits.to(torch.bfloat16).float()
    bias = torch.where(torch.rand(g.num_experts, generator=gen) < 0.4, 4.96875, 4.9375).to(torch.bfloat16)
    return [
        logits,
        bias,
        fp8(n_tokens, h),
        torch.randn(h // 128, n_tokens, generator=gen),
        fp8_experts(2 * i, h),
        torch.randn(e, 2 * i // 128, h // 128, generator=gen),
        fp8_experts(h, i),
        torch.randn(e, h // 128, i // 128, generator=gen),
        offset,
        2.5,
    ]


def f64_routing(logits, bias, scale):
    """Token by token, with plain Python sorting: (list of 8 expert ids, list of 8 weights) per token."""
    out = []
    for row in logits.double():
        s = [1 / (1 + torch.exp(-v).item()) for v in row]
        # the reference rounds sigmoid and bias sums to fp32: do the same so ties are comparable
        sb = (torch.tensor(s, dtype=torch.float32) + bias.float()).tolist()
        n = len(sb)
        gs = n // 8
        group_scores = [sum(sorted(sb[g * gs : (g + 1) * gs], reverse=True)[:2]) for g in range(8)]
        groups = sorted(range(8), key=lambda g: (-group_scores[g], g))[:4]
        cands = [e for g in groups for e in range(g * gs, (g + 1) * gs)]
        chosen = sorted(cands, key=lambda e: (-sb[e], e))[:8]
        total = sum(s[e] for e in chosen)
        out.append((chosen, [s[e] / total * scale for e in chosen]))
    return out


def f64_forward(inp):
    """Independent float64 MoE: per token, per selected local expert, explicit scale indexing."""
    logits, bias, hs, hs_scale, w1, w1_scale, w2, w2_scale, offset, scale = inp
    n_tokens, h = hs.shape
    n_local, two_i, _ = w1.shape
    i = two_i // 2
    k_blk = torch.arange(h) // 128
    x = hs.double() * hs_scale.double()[k_blk, :].t()  # x[t, k] = hs[t, k] * hs_scale[k // 128, t]
    out = torch.zeros(n_tokens, h, dtype=torch.float64)
    cache = {}
    for t, (experts, weights) in enumerate(f64_routing(logits, bias, scale)):
        for ge, w in zip(experts, weights, strict=True):
            le = ge - offset
            if not 0 <= le < n_local:
                continue
            if le not in cache:
                n1, n2 = torch.arange(two_i) // 128, torch.arange(h) // 128
                W1 = w1[le].double() * w1_scale[le].double()[n1][:, k_blk]
                W2 = w2[le].double() * w2_scale[le].double()[n2][:, torch.arange(i) // 128]
                cache[le] = (W1, W2)
            W1, W2 = cache[le]
            g1 = W1 @ x[t]
            up, gate = g1[i:], g1[:i]
            c = up / (1 + torch.exp(-up)) * gate  # silu on the SECOND half, times the first
            out[t] += w * (W2 @ c)
    return out


def rel_l2(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("n_tokens,offset", [(1, 0), (5, 16), (24, 48)])
def test_reference_matches_float64_small_definition(n_tokens, offset):
    inp = make_inputs(SMALL, n_tokens, offset, seed=n_tokens)
    ours = reference.forward(*inp)
    want = f64_forward(inp)
    assert want.abs().sum() > 0, "no local expert hit: the test would prove nothing"
    assert rel_l2(ours, want) < 1e-5
    assert reference.run(*inp).dtype == torch.bfloat16


@pytest.mark.slow  # contest-size weights in float64 on a CPU
@pytest.mark.parametrize("offset", [0, 224])
def test_reference_matches_float64_contest_offsets_0_and_224(offset):
    # One token that picks three of this rank's experts (the rest of its 8 elsewhere), as T=1 does.
    logits = torch.full((1, 256), -3.0)
    logits[0, [offset + 1, offset + 17, offset + 30]] = torch.tensor([1.0, 0.5, -1.0])
    inp = make_inputs(CONTEST, 1, offset, seed=offset, logits=logits)
    ours = reference.forward(*inp)
    want = f64_forward(inp)
    assert (want != 0).any(1).all()
    assert rel_l2(ours, want) < 1e-5


def test_swiglu_uses_silu_of_the_second_half():
    inp = make_inputs(SMALL, 4, 0, seed=3)
    w1 = inp[4]
    i = w1.shape[1] // 2
    swapped = list(inp)
    swapped[4] = torch.cat([w1[:, i:], w1[:, :i]], 1)  # exchange the halves (and their scales)
    s1 = inp[5]
    swapped[5] = torch.cat([s1[:, s1.shape[1] // 2 :], s1[:, : s1.shape[1] // 2]], 1)
    a, b = reference.forward(*inp), reference.forward(*swapped)
    assert rel_l2(a, b) > 0.1  # the halves are not interchangeable: silu(x)*y != silu(y)*x
    assert rel_l2(a, f64_forward(inp)) < 1e-5


def test_activation_scale_is_block_major():
    inp = make_inputs(SMALL, 3, 0, seed=4)
    # [H/128, T] with T contiguous: scaling only token 1's second block must change only token 1.
    base = reference.forward(*inp)
    bumped = list(inp)
    bumped[3] = inp[3].clone()
    bumped[3][1, 1] *= 2
    diff = (reference.forward(*bumped) - base).abs().sum(1)
    touched = base.abs().sum(1) > 0
    assert diff[1] > 0 and diff[0] == 0 and diff[2] == 0
    assert touched[1]


def test_signed_scales_are_multiplied_not_inverted():
    inp = make_inputs(SMALL, 4, 0, seed=5)
    neg = list(inp)
    neg[7] = -inp[7]  # negate every GEMM2 block scale: the output must flip sign exactly
    assert torch.equal(reference.forward(*neg), -reference.forward(*inp))
    assert (inp[3] < 0).any() and (inp[5] < 0).any()


def test_weights_normalise_over_all_eight_selected_experts():
    logits = (torch.randn(6, 64) * 0.6 - 1.6).to(torch.bfloat16).float()
    bias = torch.full((64,), 4.9375).to(torch.bfloat16)
    experts, weights = reference.route(logits, bias, 2.5)
    assert torch.allclose(weights.sum(1), torch.full((6,), 2.5))
    s = torch.sigmoid(logits)
    assert torch.allclose(weights, s.gather(1, experts) / s.gather(1, experts).sum(1, keepdim=True) * 2.5)
    # a rank holding only some of the 8 still uses the 8-wide normalisation: its weights sum below 2.5
    local = (experts >= 16) & (experts < 32)
    assert (local.sum(1) < 8).all()
    assert ((weights * local).sum(1) < 2.5 - 1e-3).all()


def test_tokens_with_no_local_expert_give_exact_zeros():
    logits = torch.full((3, 64), -4.0)
    logits[0, 0:16] = 1.0  # token 0 chooses rank 0's experts
    logits[1, 32:48] = 1.0  # token 1 chooses another rank's
    logits[2, 48:64] = 1.0
    inp = make_inputs(SMALL, 3, 0, seed=7, logits=logits)
    out = reference.run(*inp)
    assert (out[0] != 0).any()
    assert torch.equal(out[1:], torch.zeros_like(out[1:]))


def test_near_ties_follow_torch_topk_and_exact_ties_go_to_the_lower_index():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(512, 256, generator=gen)
    x[:, 100] = x[:, 7] + 1e-6  # near-ties, 1e-6 apart: a strict order that topk must keep
    x[:, 200] = torch.nextafter(x[:, 7], torch.tensor(float("inf")))  # one ulp apart
    assert torch.equal(
        reference.topk_indices(x, 8).sort(1).values, torch.topk(x, 8, dim=1).indices.sort(1).values
    )
    tied = torch.zeros(4, 16)
    tied[:, [3, 5, 9, 12]] = 1.0
    assert reference.topk_indices(tied, 2).tolist() == [[3, 5]] * 4  # ties: the lower indices win
    assert reference.topk_indices(tied, 6).tolist() == [[3, 5, 9, 12, 0, 1]] * 4


def test_routing_ties_at_the_group_and_expert_boundaries_match_float64():
    # Equal logits across experts and groups: exact ties in sb at the top-4 group boundary and at
    # the top-8 expert boundary; the float64 model breaks them by the lower index.
    logits = torch.full((4, 64), -1.5)
    logits[0, ::3] = -1.0
    logits[1, 8:16] = -1.0
    logits[1, 40:48] = -1.0
    logits[2] = torch.tensor([-1.0, -1.25] * 32)
    bias = torch.full((64,), 4.9375).to(torch.bfloat16)
    experts, _ = reference.route(logits, bias, 2.5)
    for t, (chosen, _) in enumerate(f64_routing(logits, bias, 2.5)):
        assert sorted(experts[t].tolist()) == sorted(chosen), t
