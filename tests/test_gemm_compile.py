"""The block-scaled GEMM kernels compile offline (Triton's bundled ptxas, no GPU) to the SASS that
variants/r4_fused/GEMM_NOTES.md describes: the Gluon kernel's main loop issues its QGMMAs without
spills and without ptxas serializing them, the portable kernel compiles for sm_100. The Gluon kernel
cannot run in the interpreter, so this is what CI can say about it. The compiler runs in a subprocess:
the report clears TRITON_INTERPRET, which this process keeps for the interpreter tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.json"
    only = "sm90_b_serial_s4,sm90_b_inflight_s4,sm90_b_noscales_s4,sm100_a_scaled,sm90_a_scaled,moe"
    res = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gemm_compile_report.py"), "--only", only, "--json", str(out)],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )  # fmt: skip
    rows = {r["label"]: r for r in json.loads(out.read_text())} if out.exists() else {}
    assert rows, res.stderr[-3000:]
    return rows


def _serialized(row):
    return any("C751" in note for note in row["ptxas"])


@pytest.mark.slow
def test_gluon_serial_kernel_pipelines_its_wgmma_without_spills(report):
    row = report["sm90_b_serial_s4"]
    assert "error" not in row, row
    assert row["stack"] == 0 and "LDL" not in row["ops"] and "STL" not in row["ops"]
    assert row["ops"]["QGMMA"] == 8  # 4 per K block (k32 steps of BK=128) in each consumer warpgroup
    assert row["ops"]["WARPGROUP.DEPBAR"] == 2  # one wait per K block, not one per QGMMA
    assert not _serialized(row)
    assert 240 in row["setmaxnreg"] and 24 in row["setmaxnreg"]


@pytest.mark.slow
def test_gluon_unscaled_kernel_is_the_serial_one_without_its_promotion(report):
    """(b) with scaled=False, the bench's measure of what (b)'s barriers and waits allow (GEMM_NOTES.md):
    the same 8 QGMMA and waits, and no FFMA (nothing promoted)."""
    row = report["sm90_b_noscales_s4"]
    assert "error" not in row, row
    assert row["stack"] == 0 and row["ops"]["QGMMA"] == 8 and row["ops"]["WARPGROUP.DEPBAR"] == 2
    assert "FFMA" not in row["ops"]
    assert not _serialized(row)


@pytest.mark.slow
def test_gluon_in_flight_kernel_is_still_serialized_by_ptxas(report):
    """GEMM_NOTES.md: Triton 3.6 copies the tied accumulator after wgmma.fence. If this fails, ptxas
    no longer serializes the in-flight variant: time it again, it may beat the serial one now."""
    row = report["sm90_b_inflight_s4"]
    assert "error" not in row, row
    assert row["stack"] == 0
    assert _serialized(row)


@pytest.mark.slow
def test_portable_kernel_compiles_for_hopper_and_blackwell(report):
    assert report["sm90_a_scaled"]["ops"]["QGMMA"] > 0
    assert report["sm100_a_scaled"]["ops"]["UTCQMMA"] > 0
    for row in (report["sm90_a_scaled"], report["sm100_a_scaled"]):
        assert row["stack"] == 0


@pytest.mark.slow
def test_large_t_gemms_and_permute_compile_without_spills(report):
    """Rung 4's large-T GEMMs (grouped Gluon) keep their K loops out of local memory: the no-op wait after
    each promotion stops ptxas from giving the next wgmma a second partial (676 B of spills in GEMM1
    without it); the permute launch before them compiles for both targets."""
    # per K block in each of the two consumers: groups of wgmmas of 4 QGMMA each, each group followed by
    # its wait and the no-op one. GEMM1: the up and the gate panel (2 groups of 1). GEMM2 on each 128
    # columns of W2: C's hi and lo terms in one group (the solution: lo in hi's scale) or in two (rung 3's
    # pair, `_own_lo`)
    for label, groups, wgmmas in (("sm90_moe_gemm1_grouped", 2, 1), ("sm90_moe_gemm1_grouped_gather", 2, 1),
                                  ("sm90_moe_gemm2_grouped_n128", 1, 2),
                                  ("sm90_moe_gemm2_grouped_n256", 2, 2), ("sm90_moe_gemm2_grouped_n128_own_lo", 2, 1),
                                  ("sm90_moe_gemm2_grouped_n256_own_lo", 4, 1)):  # fmt: skip
        row = report[label]
        assert "error" not in row, row
        assert row["stack"] == 0 and "LDL" not in row["ops"] and "STL" not in row["ops"], row
        assert row["ops"]["QGMMA"] == 2 * 4 * wgmmas * groups, row
        assert row["ops"]["WARPGROUP.DEPBAR"] == 2 * 2 * groups, row
        assert not _serialized(row)
        # the consumers' and the producer's registers: a gathering producer (`gather_rows`) holds row
        # addresses, so it takes 56 and leaves the consumers 224
        split = (224, 56) if label == "sm90_moe_gemm1_grouped_gather" else (240, 24)
        assert split[0] in row["setmaxnreg"] and split[1] in row["setmaxnreg"], row
    for cap in (90, 100):
        permute = report[f"sm{cap}_moe_permute"]
        assert "error" not in permute and permute["stack"] == 0, permute
