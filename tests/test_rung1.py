"""Rung 1 against the reference: small definition (every workload, both input styles) and
contest-shaped T in {1, 3}, loaded from its packed Solution as flashinfer-bench loads it."""

import pytest
import torch

from fibmoe import check, dataset, runner, variants
from fibmoe.geometry import CONTEST, SMALL


@pytest.fixture(scope="module")
def rung1():
    v = variants.resolve(["r1-torch"])[0]
    return {
        g.name: variants.build(variants.pack(v, g.name), dataset.load(g.name).definition) for g in (SMALL, CONTEST)
    }


@pytest.mark.parametrize("style", ["contest", "quantized"])
def test_rung1_small_definition_every_workload(rung1, style):
    ds = dataset.load(SMALL.name)
    cases = check.run_check(variants.resolve(["r1-torch"]), ds, ds.workloads, "cpu", trials=2, style=style)
    for c in cases:
        assert c["status"] == "PASSED", c
        assert c["rel_l2_error"] < 4e-3  # bf16 rounding of the output is ~1.7e-3
        assert c["routing_agreement"] == 1.0


@pytest.fixture(scope="module")
def contest_inputs():
    """Contest geometry, 3 tokens (generating the weights takes ~20 s on a CPU: once per worker that runs a case):
    the T=1 workload's record with a 3-row routing of our own; its first row is that workload's own."""
    from fibmoe import inputs

    ds = dataset.load(CONTEST.name)
    trace = next(w for w in ds.workloads if w.workload.axes["seq_len"] == 1)
    routing = dataset.routing_tensors(ds, trace)
    logits = torch.cat([routing["routing_logits"]] * 3)
    logits[1:, 32:64] += 0.5 * torch.arange(1, 3)[:, None]  # later tokens favour this rank more
    trace = trace.model_copy(deep=True)
    trace.workload.axes["seq_len"] = 3
    return inputs.generate(ds, trace, "cpu", "contest", routing={**routing, "routing_logits": logits})


@pytest.mark.slow  # contest-size weights (32 x 4096 x 7168) on a CPU
@pytest.mark.parametrize("seq_len", [1, 3])
def test_rung1_contest_shapes(rung1, contest_inputs, seq_len):
    from fibmoe import judge, reference

    inp = list(contest_inputs)
    inp[0], inp[2], inp[3] = inp[0][:seq_len], inp[2][:seq_len], inp[3][:, :seq_len].contiguous()  # first tokens
    ref32 = reference.forward(*inp)
    assert (ref32 != 0).any(1).all(), "every token must hit this rank for the test to mean something"
    out = runner.call(rung1[CONTEST.name], inp, ref32.to(torch.bfloat16))
    v = judge.judge(out, ref32.to(torch.bfloat16), ref32)
    assert v.status == "PASSED", v
    assert v.rel_l2_error < 4e-3
