"""Rung 3's launch paths on a GPU, on contest workloads (one per tile bucket): the first call goes
through Triton's dispatcher, later calls straight through the compiled kernels' C launcher (on Triton
3.6.x); both give the same bits, and so does a workspace built from the same tiles by an experiment.
This also pins that PDL (GPU-only) leaves the result deterministic."""

import dataclasses
import importlib

import pytest
import torch

from fibmoe import dataset, inputs, variants
from fibmoe.geometry import CONTEST


@pytest.fixture(scope="module")
def r3():
    ds = dataset.load(CONTEST.name)
    fn = variants.build(variants.pack(variants.resolve(["r3-triton-fp8"])[0], ds.definition.name), ds.definition)
    return ds, fn, variants.module_of(fn)


def _empty(inp):
    return torch.full(inp[2].shape, float("nan"), dtype=torch.bfloat16, device="cuda")


@pytest.mark.parametrize("seq_len", [1, 7, 56, 901, 14107])
def test_fast_path_and_workspace_give_the_dispatchers_bits(r3, seq_len):
    ds, fn, mod = r3
    launch = importlib.import_module(".launch", mod.__package__)
    w = next(w for w in ds.workloads if w.workload.axes["seq_len"] == seq_len)
    torch.manual_seed(seq_len)
    inp = inputs.generate(ds, w, "cuda", "contest")
    outs = []
    for _ in range(3):  # dispatcher, then the fast path twice
        out = _empty(inp)
        fn(*inp, out)
        outs.append(out)
    assert (mod._LAST[0] is not None) == launch.RAW_LAUNCH  # the fast path was taken where it exists
    T, E = inp[0].shape
    NL, N1, H = inp[4].shape
    tiles = mod.tiles_for(T, mod.capability(inp[2].device))
    ws = mod.Workspace(inp[2].device, T, E, NL, H, N1 // 2, dataclasses.replace(tiles))
    outs.append(ws.run(*inp, _empty(inp)))
    torch.cuda.synchronize()
    assert not outs[0].isnan().any()
    for other in outs[1:]:
        assert torch.equal(other, outs[0])
