"""`fibmoe check`: every variant, loaded exactly as flashinfer-bench loads its packed Solution, run on
fresh random inputs for each trial of each workload and judged against the reference (`runner`)."""

from __future__ import annotations

import os
import re

import torch

from . import judge, runner, variants
from .dataset import Dataset


def resolve_device(device: str) -> str:
    from .errors import FibmoeError

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise FibmoeError(f"--device {device!r}: choose auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise FibmoeError(f"--device {device}: no CUDA device is visible on this machine")
        if ":" in device and int(device.split(":")[1]) >= count:
            raise FibmoeError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return device


def skip_reason(variant: variants.Variant, ds: Dataset, device: str) -> str:
    """Why a variant cannot run here, or '' when it can."""
    spec = variant.spec
    kind = device.split(":")[0]
    if kind == "cpu" and spec.language == "triton":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton on a CPU needs TRITON_INTERPRET=1"
        if ds.definition.const_axes["hidden_size"] > 1024:
            return "Triton interpreter at contest size would take hours: use --definition small or a GPU"
        return ""
    if kind not in spec.target_hardware:
        return f"targets {', '.join(spec.target_hardware)}, not {kind}"
    return ""


def run_check(
    chosen: list[variants.Variant],
    ds: Dataset,
    workloads: list,
    device: str,
    trials: int = 3,
    style: str = "contest",
    progress=None,
    timeout_s: float = runner.DEFAULT_TIMEOUT_S,
    on_workload=None,
) -> list[dict]:
    """Judge every variant on every workload (a record each); each trial's inputs are shared by all variants."""
    settings = runner.Settings(trials=trials, style=style, timeout_s=timeout_s)
    return runner.run(chosen, ds, workloads, device, settings, timed=False, progress=progress, on_workload=on_workload)


def all_passed(records: list[dict]) -> bool:
    return all(r["status"] in (judge.PASSED, judge.SKIPPED) for r in records) and any(
        r["status"] == judge.PASSED for r in records
    )
