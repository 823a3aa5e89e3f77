"""The block-scaled FP8 GEMM (variants/r4_fused/gemm_blockscaled.py), version (a), in Triton's CPU
interpreter, against an fp32 reference computed in torch.

The interpreter runs in a subprocess with TRITON_INTERPRET=1 set for it alone. Two interpreter defects
(TRACK_A.md section 5) are handled on purpose:
- Triton 3.6's interpreter turns a loop bound into a Python int with `int()` of a one-element array,
  which NumPy >= 2.4 refuses; the persistent tile loop has runtime bounds, so the subprocess patches that
  one conversion (`.item()`), nothing else.
- it casts fp32 to bf16 by truncation, not round-to-nearest-even. So the output is compared, bit for bit,
  with the reference truncated to bf16 (equal but for the rare element whose fp32 sum, in another order,
  falls on the other side of a bf16 boundary), and the test notices the day the interpreter rounds.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "variants" / "r4_fused"))
import gemm_blockscaled as gb  # noqa: E402

SHAPE = (64, 256, 512)  # M, N, K: two 128-wide N tiles and four K blocks, so the scales vary along both

INTERPRETED_RUN = textwrap.dedent(
    """
    import json, sys
    import torch
    from triton.runtime import interpreter
    _patch = interpreter._patch_lang_tensor
    def _patch_with_item(tensor, scope):  # int() of a one-element array: refused by NumPy >= 2.4
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))
    interpreter._patch_lang_tensor = _patch_with_item
    sys.path.insert(0, sys.argv[1])
    import gemm_blockscaled as gb
    M, N, K = (int(x) for x in sys.argv[2:5])
    a, sa, b, sb = gb.make_inputs(M, N, K, seed=int(sys.argv[5]))
    outs = {}
    for name, cfg in [("scaled", {}), ("scaled_ws", dict(warp_specialize=True)), ("plain", dict(scaled=False))]:
        outs[name] = gb.blockscaled_gemm_triton(a, sa, b, sb, BM=64, **cfg).view(torch.int16).flatten().tolist()
    json.dump(outs, sys.stdout)
    """
)


def _bf16_truncate(x):
    """fp32 -> bf16 by dropping the low 16 bits: what the interpreter does."""
    return (x.float().contiguous().view(torch.int32) & -65536).view(torch.float32).bfloat16()


@pytest.fixture(scope="module")
def interpreted():
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run(
        [sys.executable, "-c", INTERPRETED_RUN, str(ROOT / "variants" / "r4_fused"), *map(str, SHAPE), "7"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    M, N, _ = SHAPE
    return {
        k: torch.tensor(v, dtype=torch.int16).view(torch.bfloat16).view(M, N) for k, v in json.loads(res.stdout).items()
    }


@pytest.fixture(scope="module")
def inputs():
    return gb.make_inputs(*SHAPE, seed=7)


def test_inputs_are_signed_non_power_of_two_scales_that_matter(inputs):
    a, sa, b, sb = inputs
    for s in (sa, sb):
        assert (s < 0).any() and (s > 0).any()
        assert (torch.frexp(s)[0].abs() != 0.5).all()  # no power of two
    ref = gb.reference(a, sa, b, sb)
    # a kernel that mixed up the A scales' layout ([K/128, M]) or dropped B's scales would be far off
    wrong_a = gb.reference(a, sa.flip(1), b, sb)
    wrong_b = gb.reference(a, sa, b, torch.ones_like(sb))
    assert gb.rel_l2(wrong_a, ref) > 0.5 and gb.rel_l2(wrong_b, ref) > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("version", ["scaled", "scaled_ws"])
def test_triton_version_a_matches_the_fp32_reference(interpreted, inputs, version):
    out = interpreted[version]
    ref = gb.reference(*inputs)
    assert gb.rel_l2(out, ref) < 5e-3  # bf16 output (truncated here): measured ~3e-3
    equal = (out.view(torch.int16) == _bf16_truncate(ref).view(torch.int16)).float().mean().item()
    assert equal > 0.97, equal


@pytest.mark.slow
def test_triton_version_a_without_scales_is_the_plain_fp8_gemm(interpreted, inputs):
    a, _, b, _ = inputs
    ref = a.float() @ b.float().t()
    equal = (interpreted["plain"].view(torch.int16) == _bf16_truncate(ref).view(torch.int16)).float().mean().item()
    assert equal > 0.97, equal


@pytest.mark.slow
def test_interpreter_still_truncates_to_bf16(interpreted, inputs):
    """If this fails the interpreter rounds to nearest-even now: compare with `ref.bfloat16()` instead."""
    ref = gb.reference(*inputs)
    out = interpreted["scaled"].view(torch.int16)
    rne = (out == ref.bfloat16().view(torch.int16)).float().mean().item()
    trunc = (out == _bf16_truncate(ref).view(torch.int16)).float().mean().item()
    assert trunc > rne + 0.2, (trunc, rne)
