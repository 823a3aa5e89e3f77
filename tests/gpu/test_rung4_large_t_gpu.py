"""Rung 4's large-T path with the grouped Gluon GEMM1 (Hopper only) on the contest's large workloads:
the layer against the fp32 reference (the official rule and rung 3's bounds), the Gluon kernel's C
against rung 3's GEMM1's C for the same rows, and bit-identical repeated calls. Outputs are poisoned
before every call. tests/test_rung4_large_t.py checks the same path's contract on the CPU."""

import sys

import pytest
import torch

from fibmoe import dataset, inputs, reference, variants
from fibmoe.geometry import CONTEST

REL_L2 = 3e-3  # issue 8: rung 3's accuracy (measured 1.7-2.4e-3 there)


@pytest.fixture(scope="module")
def r4():
    ds = dataset.load(CONTEST.name)
    fn = variants.build(variants.pack(variants.resolve(["r4-fused-persistent"])[0], ds.definition.name), ds.definition)
    mod = variants.module_of(fn)
    large_t = sys.modules[mod.__package__ + ".large_t"]
    if not sys.modules[mod.__package__ + ".gemm_blockscaled"].gluon_supported(torch.device("cuda")):
        pytest.skip("the grouped Gluon GEMM1 runs on Hopper (sm_90) only")
    return ds, mod, large_t


def _empty(inp):
    return torch.full(inp[2].shape, float("nan"), dtype=torch.bfloat16, device="cuda")


@pytest.mark.parametrize("seq_len", [11948, 14107])
def test_gluon_gemm1_layer_matches_the_reference_and_rung3s_c(r4, seq_len):
    ds, mod, large_t = r4
    w = next(w for w in ds.workloads if w.workload.axes["seq_len"] == seq_len)
    torch.manual_seed(seq_len)
    inp = inputs.generate(ds, w, "cuda", "contest")
    run = mod.Runner(gluon_gemm1=True)
    a, b = run(*inp, _empty(inp)), run(*inp, _empty(inp))
    torch.cuda.synchronize()
    assert not a.isnan().any()
    assert torch.equal(a, b)
    ref32 = reference.forward(*inp)
    err = ((a.float() - ref32).norm() / ref32.norm()).item()
    assert err < REL_L2, err

    # C, the hand-off to rung 3's GEMM2: the Gluon kernel's against rung 3's GEMM1's for the same rows
    (gluon_ws,) = [ws for ws in run.workspaces.values() if isinstance(ws, large_t.Workspace)]
    T, E = inp[0].shape
    NL, N1, H = inp[4].shape
    rung3_ws = large_t.Rung3Workspace(inp[2].device, T, E, NL, H, N1 // 2, gluon_ws.tiles)
    rung3_ws.run(*inp, _empty(inp))
    torch.cuda.synchronize()
    rows = gluon_ws.rid_perm[gluon_ws.rid_perm >= 0].long()
    assert len(rows) > 0
    c_gluon = _dequantized_c(gluon_ws, rows)
    c_rung3 = _dequantized_c(rung3_ws, rows)
    rel = ((c_gluon - c_rung3).norm() / c_rung3.norm()).item()
    assert rel < 1e-3, rel  # the same math; the fp32 sums in another order (and their fp8 roundings)


def _dequantized_c(ws, rows):
    """C of `rows` in fp32 from the hi/lo pair and its scales ([R, I])."""
    q = ws.cq[rows].float().view(len(rows), ws.I // 128, 2, 128)
    s = ws.cs[rows].float()  # [rows, I/128, 2]
    return (q * s[..., None]).sum(dim=2).reshape(len(rows), ws.I)
