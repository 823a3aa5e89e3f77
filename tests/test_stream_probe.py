"""scripts/stream_probe.py's kernel in Triton's CPU interpreter (the probe itself times it on a GPU):
every load form (pointers, a TMA tensor descriptor) computes every item of the scaled swapped GEMM it
stands for, so a rate the probe reports is the rate of a loop that does the fused kernel's work."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe(load_script):
    return load_script("stream_probe")


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    ["p:tma=0,kc=8", "t:tma=1,kc=28", "t0:tma=1,scales=0,kc=8", "p0:scales=0,kc=56", "pk:k_first=1,kc=8",
     "pc:contig=1,k_first=1,kc=4", "tc:tma=1,contig=1,kc=8", "ps:dot=0,kc=8", "ts:tma=1,dot=0,contig=1,kc=28",
     "tw:tma=1,ws=1,kc=8", "r1:reg=1,kc=8", "r2:reg=2,evict=1,kc=4", "r2w:reg=2,kc=56"],
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
    with pytest.raises(SystemExit, match="the Gluon and register loops have the plain item order"):
        probe.parse_shape("g:gluon=1,k_first=1")
    with pytest.raises(SystemExit, match="the Gluon and register loops have the plain item order"):
        probe.parse_shape("r:reg=1,tma=1")
    with pytest.raises(SystemExit, match="reg is 0, 1 or 2"):
        probe.parse_shape("r:reg=3")


@pytest.mark.slow
@pytest.mark.parametrize("stages", [4, 8])
def test_the_gluon_loop_compiles_for_hopper_without_spills(stages):
    """The hand-written load-only producer (stream_probe_gluon.py) cannot run in the interpreter; its
    build for sm_90 is checked offline, in a subprocess (the compiler clears TRITON_INTERPRET, which this
    process keeps): 4 + 4 + 1 warps (12 as launched), both consumers' wgmmas, the TMA copies, nothing
    spilled. Its numbers are checked on a GPU, by the probe itself, before it is timed."""
    script = ROOT / "scripts" / "stream_probe_gluon.py"
    res = subprocess.run([sys.executable, str(script), "--stages", str(stages)], capture_output=True, text=True,
                         timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(res.stdout.splitlines()[-1])
    assert r["warps"] == 12 and r["regs"] <= 168 and r["stack"] == 0, r
    assert r["sass"].get("QGMMA", 0) >= 8 and r["sass"].get("UTMALDG", 0) >= 2, r["sass"]
