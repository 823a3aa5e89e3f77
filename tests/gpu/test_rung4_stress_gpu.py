"""Rung 4's fused kernel, call after call on fresh inputs (the GPU only: a race needs concurrent
programs). v32: one `check` trial in 57 was wrong with two CTAs an SM (T = 53, rel L2 2.1e-2), likely GEMM2
reading row 0's C scales for padding rows before row 0's tile was written, with no wait invalidating the
L1 afterwards (v33: Triton had folded the waits' acquire). Here the table's shape (two CTAs an SM up to
T = 128: since v34 above T = 4, since v40 at T <= 4 too, with stream-K) and the one-CTA shape
(`gemm2_step_pairs=True, num_stages=4`) each take 20 calls at T = 1, 7 and mid-T workloads, every one
checked against its own fp32 reference (scripts/r4_tiles_sweep.py's `stress_problem`)."""

import dataclasses
import sys

import pytest
import torch

from fibmoe import dataset, inputs, reference, variants
from fibmoe.geometry import CONTEST

CALLS = 20
SHAPES = {"table": {}, "one-cta": dict(gemm2_step_pairs=True, num_stages=4)}


@pytest.fixture(scope="module")
def r4():
    ds = dataset.load(CONTEST.name)
    fn = variants.build(variants.pack(variants.resolve(["r4-fused-persistent"])[0], ds.definition.name), ds.definition)
    mod = variants.module_of(fn)
    return ds, mod, sys.modules[mod.__package__ + ".tiles"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seq_len", [1, 7, 15, 53, 56, 80])
def test_every_call_on_fresh_inputs_is_right(r4, load_script, seq_len, shape):
    ds, mod, tiles_mod = r4
    sweep = load_script("r4_tiles_sweep")
    w = next(w for w in ds.workloads if w.workload.axes["seq_len"] == seq_len)
    runner = mod.Runner(dataclasses.replace(tiles_mod.tiles_for(seq_len, mod.capability(torch.device("cuda"))),
                                            **SHAPES[shape]))  # fmt: skip

    def fresh(i):
        torch.manual_seed(7000 + 100 * seq_len + i)
        x = inputs.generate(ds, w, "cuda", "contest", routing=dataset.routing_tensors(ds, w))
        return x, reference.forward(*x)

    problem = sweep.stress_problem(runner, fresh, CALLS)
    assert problem is None, problem
