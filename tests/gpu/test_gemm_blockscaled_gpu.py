"""The block-scaled FP8 GEMM kernels on the GPU against the fp32 reference: version (a) everywhere,
version (b) (Gluon, wgmma) on Hopper. Shapes with ragged M (TMA zero-fills and clips the edge tiles), an
odd and an even number of K blocks (the in-flight loop's two tails), and more tiles than SMs (the
persistent loop turns more than once)."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "variants" / "r4_fused"))
import gemm_blockscaled as gb  # noqa: E402

SHAPES = [(200, 256, 384), (1000, 512, 1024), (4096, 4096, 2048), (64, 128, 128)]
REL_L2 = 4e-3  # a wrong scale or layout gives ~1


def _check(out, a, sa, b, sb):
    ref = gb.reference(a, sa, b, sb)
    assert torch.isfinite(out).all()
    err = gb.rel_l2(out, ref)
    assert err < REL_L2, err
    # Beyond the final bf16 rounding (~1.1e-3) the kernel adds only the FP8 tensor cores' accumulation
    # error within a 128-wide K block (promoted to fp32 after every block): well under the rounding.
    rounding = gb.rel_l2(ref.bfloat16(), ref)
    assert err < 2 * rounding, (err, rounding)


@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("ws", [False, True])
def test_triton_version_a(M, N, K, ws):
    a, sa, b, sb = gb.make_inputs(M, N, K, device="cuda", seed=M + K)
    out = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device="cuda")
    _check(gb.blockscaled_gemm_triton(a, sa, b, sb, out=out, warp_specialize=ws), a, sa, b, sb)


@pytest.mark.skipif(not gb.gluon_supported(torch.device("cuda")), reason="the Gluon kernel is Hopper-only")
@pytest.mark.parametrize("M,N,K", SHAPES)
@pytest.mark.parametrize("in_flight,stages", [(False, 4), (False, 5), (True, 4)])
def test_gluon_version_b(M, N, K, in_flight, stages):
    a, sa, b, sb = gb.make_inputs(M, N, K, device="cuda", seed=M + K)
    out = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device="cuda")
    _check(gb.blockscaled_gemm_gluon(a, sa, b, sb, out=out, in_flight=in_flight, stages=stages), a, sa, b, sb)


@pytest.mark.skipif(not gb.gluon_supported(torch.device("cuda")), reason="the Gluon kernel is Hopper-only")
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_gluon_version_b_unscaled(M, N, K):
    """scaled=False, the bench's measure of (b)'s structure without its promotion: C = A @ B^T, the scales
    ignored. The tensor cores accumulate all of K here, hence a looser bound than the promoted kernel's
    (rel L2 2.5e-3 at K = 7168 in the bench, v48)."""
    a, sa, b, sb = gb.make_inputs(M, N, K, device="cuda", seed=M + K)
    out = torch.full((M, N), float("nan"), dtype=torch.bfloat16, device="cuda")
    got = gb.blockscaled_gemm_gluon(a, sa, b, sb, out=out, scaled=False)
    assert torch.isfinite(got).all()
    assert gb.rel_l2(got, a.float() @ b.float().t()) < REL_L2


def test_blockscaled_gemm_picks_a_working_version():
    a, sa, b, sb = gb.make_inputs(512, 256, 512, device="cuda", seed=3)
    _check(gb.blockscaled_gemm(a, sa, b, sb), a, sa, b, sb)
