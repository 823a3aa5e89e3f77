"""scripts/compile_check.py: a Triton rung's kernels compiled offline (Triton's bundled ptxas, no GPU),
through the `compile_plan` hook of the rung's entry module. Run as a subprocess: the script must import
Triton without TRITON_INTERPRET, which this process may have set."""

import os
import subprocess
import sys

import pytest

from fibmoe import variants

SCRIPT = variants.REPO_ROOT / "scripts" / "compile_check.py"


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=variants.REPO_ROOT, env=env
    )


@pytest.mark.slow
def test_rung3_gemm2_compiles_to_fp8_tensor_core_mmas_without_spilling():
    """GEMM2 at T=1 for sm_90: warpgroup FP8 MMAs (QGMMA) in the SASS, nothing spilled to the stack."""
    proc = _run("r3-triton-fp8", "--cap", "90", "-t", "1", "-k", "gemm2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = proc.stdout.splitlines()
    assert line.startswith("sm_90 T=1") and " gemm2 " in line, line
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f and not f.startswith("T="))
    assert 0 < int(fields["regs"]) <= 255 and fields["stack"] == "0" and fields["loop_spills"] == "0", line
    assert "'QGMMA'" in line and "'LDL'" not in line, line


def test_a_variant_without_the_hook_or_unknown_is_one_error_line():
    for name, message in (("r1-torch", "has no compile_plan"), ("no-such-rung", "unknown variant")):
        proc = _run(name)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_rung4_large_t_gluon_gemms_compile_through_the_hook():
    """Rung 4 above the fused T on sm_90: the hook hands over the Gluon GEMMs (TMA descriptors among their
    arguments) and they compile to FP8 wgmmas without spilling."""
    proc = _run("r4-fused-persistent", "--cap", "90", "-t", "14107", "-k", "gemm1_gluon", "-k", "gemm2_gluon")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [ln.split()[2] for ln in lines] == ["gemm1_gluon", "gemm2_gluon"], lines
    for line, qgmma in zip(lines, (16, 32), strict=True):  # GEMM2: 256 columns an item, two accumulators
        assert "stack=0" in line and f"'QGMMA': {qgmma}" in line and "'LDL'" not in line, line


@pytest.mark.slow
def test_rung4_waits_keep_their_acquire():
    """Every wait of rung 4's fused kernel ends in an acquire, which the SASS shows as an L1 invalidation
    (CCTL.IVALL) after a strong load: T = 56 has three wait sites (routing, a tile's C, an H block's
    rows) and the exit ticket. Triton 3.6 folds an atomic add of 0 whose result is unused, acquire and
    all: the kernel had one CCTL.IVALL (the exit ticket's) until v33."""
    proc = _run("r4-fused-persistent", "--cap", "90", "-t", "56")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = proc.stdout.splitlines()
    n = int(line.split("'CCTL.IVALL': ")[1].split("}")[0].split(",")[0])
    assert n >= 4, line


@pytest.mark.slow
def test_rung4_fused_kernel_on_sm100_spills_nothing_up_to_t128():
    """The B200 rows of rung 4's table (8 warps up to T = 128) exist because the 4-warp shapes spill inside
    the K loops on sm_100 (tcgen05 reads each partial back to scale it): the table's kernel has tcgen05
    FP8 MMAs and no stack at all there."""
    proc = _run("r4-fused-persistent", "--cap", "100", "-t", "7", "-t", "56")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert [ln.split()[1] for ln in lines] == ["T=7", "T=56"], lines
    for line in lines:
        assert "warps=8" in line and "stack=0" in line and "loop_spills=0" in line, line
        assert "'UTCQMMA'" in line and "'LDL'" not in line, line
