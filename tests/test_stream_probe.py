"""scripts/stream_probe.py's kernel in Triton's CPU interpreter (the probe itself times it on a GPU):
every load form (pointers, a TMA tensor descriptor) computes every item of the scaled swapped GEMM it
stands for, so a rate the probe reports is the rate of a loop that does the fused kernel's work."""

import pytest
import torch


@pytest.fixture(scope="module")
def probe(load_script):
    return load_script("stream_probe")


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    ["p:tma=0,kc=8", "t:tma=1,kc=28", "t0:tma=1,scales=0,kc=8", "p0:scales=0,kc=56", "pk:k_first=1,kc=8",
     "pc:contig=1,k_first=1,kc=4", "tc:tma=1,contig=1,kc=8", "ps:dot=0,kc=8", "ts:tma=1,dot=0,contig=1,kc=28",
     "tw:tma=1,ws=1,kc=8"],
)  # fmt: skip
def test_every_item_matches_torch(probe, spec):
    _, shape = probe.parse_shape(spec)
    w, ws, a, as_ = probe.make_inputs(256, 16, torch.device("cpu"))
    n_items = 2 * (56 // shape["kc"])
    out = torch.full((n_items, 128, 16), float("nan"))  # an item never written stays NaN
    probe.launch(shape, w, ws, a, as_, out, grid=3)  # 3 programs: each loops over several items
    want = probe.reference(w, ws, a, as_, n_items, shape)
    assert not out.isnan().any()
    assert ((out - want).norm() / want.norm()).item() < 1e-6


def test_a_bad_field_is_one_clear_error(probe):
    with pytest.raises(SystemExit, match="nope is not one of"):
        probe.parse_shape("x:nope=1")
