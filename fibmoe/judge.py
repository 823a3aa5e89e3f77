"""Judging one output: the official rule, and how close we really are.

The official rule (flashinfer-bench's own `compute_error_stats`, with the MoE settings: atol 1.0,
rtol 0.3, matched ratio 0.9) compares against the bf16 reference output. Our own figures compare
against the fp32 reference result before its bf16 cast: max abs error, relative L2 error, and
routing agreement (the fraction of tokens whose selected expert set equals the reference's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import torch

ATOL, RTOL, MATCHED_RATIO = 1.0, 0.3, 0.9

PASSED = "PASSED"
INCORRECT_NUMERICAL = "INCORRECT_NUMERICAL"
INCORRECT_SHAPE = "INCORRECT_SHAPE"
INCORRECT_DTYPE = "INCORRECT_DTYPE"
RUNTIME_ERROR = "RUNTIME_ERROR"
SKIPPED = "SKIPPED"
COMPILE_ERROR = "COMPILE_ERROR"
TIMEOUT = "TIMEOUT"


def official_config():
    from flashinfer_bench import BenchmarkConfig

    return BenchmarkConfig(atol=ATOL, rtol=RTOL, required_matched_ratio=MATCHED_RATIO)


@dataclass
class Verdict:
    status: str
    max_abs_error: Optional[float] = None
    max_rel_error: Optional[float] = None  # flashinfer-bench's figure, for its Trace records
    rel_l2_error: Optional[float] = None
    matched_ratio: Optional[float] = None
    routing_agreement: Optional[float] = None
    message: str = ""
    error: Optional[str] = None  # a failure's whole text (traceback), beside the one-line message

    def to_dict(self) -> dict:
        return asdict(self)


def judge(out, ref_bf16: torch.Tensor, ref_fp32: torch.Tensor) -> Verdict:
    """Shape and dtype exactly, every element finite, then the official tolerance rule."""
    from flashinfer_bench.bench.utils import compute_error_stats

    if not isinstance(out, torch.Tensor):
        return Verdict(INCORRECT_SHAPE, message=f"output is a {type(out).__name__}, not a tensor")
    if tuple(out.shape) != tuple(ref_bf16.shape):
        return Verdict(INCORRECT_SHAPE, message=f"output shape {tuple(out.shape)}, expected {tuple(ref_bf16.shape)}")
    if out.dtype != ref_bf16.dtype:
        return Verdict(INCORRECT_DTYPE, message=f"output dtype {out.dtype}, expected {ref_bf16.dtype}")
    diff = out.float() - ref_fp32.to(out.device)
    rel_l2 = (diff.norm() / ref_fp32.norm().clamp_min(1e-30)).item()
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        unwritten = int((~finite).sum())
        return Verdict(
            INCORRECT_NUMERICAL,
            rel_l2_error=float("nan"),
            message=f"{unwritten} of {out.numel()} elements are NaN/inf (unwritten or overflowed)",
        )
    _, max_rel, exceeds, matched = compute_error_stats(out, ref_bf16.to(out.device), official_config())
    return Verdict(
        INCORRECT_NUMERICAL if exceeds else PASSED,
        max_abs_error=diff.abs().max().item() if diff.numel() else 0.0,
        max_rel_error=max_rel,
        rel_l2_error=rel_l2,
        matched_ratio=matched,
        message=f"matched ratio {matched:.4f} < {MATCHED_RATIO}" if exceeds else "",
    )


def routing_agreement(experts: torch.Tensor, ref_experts: torch.Tensor) -> float:
    """Fraction of tokens whose set of selected experts equals the reference's."""
    if experts.shape != ref_experts.shape:
        return 0.0
    same = (experts.sort(1).values.to(ref_experts.device) == ref_experts.sort(1).values).all(1)
    return same.double().mean().item() if same.numel() else 1.0
