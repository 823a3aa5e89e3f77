"""`fibmoe eval`: the evaluator an evolutionary search or a coding agent calls on one candidate.

Pack it, then for each workload, in a child process of its own (`runner`): build it as flashinfer-bench
does, check it on fresh inputs against the reference and time it with the official protocol (mean of
the spans); once a workload has failed the rest are only checked (the score is 0 anyway). The result is
one JSON object:
`combined_score` is the mean speedup over the reference across the workloads, 0 when any failed
(the contest's zeroing rule; `runner.summary` computes it); per-workload latency, speedup and error
figures; and the build or runtime error text when it fails. `--quick` runs 5 workloads spread over
the range of T, one trial, 3 warm-up and 10 timed calls. `--official` runs flashinfer-bench's own
`Benchmark` instead (GPU only). `--ncu` adds Nsight Compute figures for the hottest kernel.

A candidate is a variant (name or folder), a packed Solution JSON, or a single `.py` file: that file
is packed alone as a python variant, or a triton one if it imports triton, with entry `<file>::run`
(`--entry` to change it) in destination-passing style (the output tensor is the 11th argument).
"""

from __future__ import annotations

import re
import shutil
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from pydantic import ValidationError

from . import check, judge, runner, variants
from .errors import FibmoeError, error_text

QUICK = runner.Settings(warmup=3, iterations=10, trials=1)
FULL = runner.Settings()
QUICK_WORKLOADS = 5
TRITON_IMPORT = re.compile(r"^\s*(import\s+triton\b|from\s+triton\b)", re.MULTILINE)


# ---- the candidate ------------------------------------------------------------------------------


def load_candidate(target: str, workdir: Path, entry: str = "run") -> variants.Variant:
    """A Variant from a variant name or folder, a Solution JSON, or a lone kernel file (packed alone)."""
    path = Path(target)
    if path.suffix == ".py":
        if not path.is_file():
            raise FibmoeError(f"no such kernel file: {target}")
        return _file_variant(path, Path(workdir), entry)
    if path.suffix == ".json":
        if not path.is_file():
            raise FibmoeError(f"no such Solution file: {target}")
        return variants.unpack(variants.read_solution(path), Path(workdir) / "solution", force=True)
    return variants.resolve([target])[0]


def _file_variant(path: Path, workdir: Path, entry: str) -> variants.Variant:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", entry):
        raise FibmoeError(f"--entry {entry!r} is not a Python function name")
    try:
        source = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise FibmoeError(f"cannot read {path}: {e}") from None
    triton = bool(TRITON_IMPORT.search(source))
    name = re.sub(r"[^a-z0-9_.-]+", "-", path.stem.lower()).strip("-._") or "candidate"
    if not name[0].isalnum():
        name = f"k{name}"
    try:
        spec = variants.VariantSpec(
            name=name,
            language="triton" if triton else "python",
            entry_point=f"{path.name}::{entry}",
            destination_passing_style=True,
            description=f"candidate kernel from {path.name}",
            target_hardware=["cuda"] if triton else ["cuda", "cpu"],
            dependencies=["torch", "triton"] if triton else ["torch"],
        )
    except ValidationError as e:
        raise FibmoeError(f"{path}: cannot make a variant of it: {e.errors()[0]['msg']}") from None
    folder = workdir / "candidate"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    shutil.copyfile(path, folder / path.name)
    return variants.Variant(spec=spec, path=folder)


def quick_workloads(workloads: list, n: int = QUICK_WORKLOADS) -> list:
    """`n` workloads whose T spread evenly in log T from the smallest to the largest (dataset order)."""
    import math

    if len(workloads) <= n:
        return list(workloads)
    logs = [math.log(w.workload.axes["seq_len"]) for w in workloads]
    lo, hi = min(logs), max(logs)
    chosen: list[int] = []
    for i in range(n):
        target = lo + (hi - lo) * i / (n - 1)
        free = [j for j in range(len(workloads)) if j not in chosen]
        chosen.append(min(free, key=lambda j: (abs(logs[j] - target), j)))
    return [w for j, w in enumerate(workloads) if j in chosen]


# ---- the evaluation ----------------------------------------------------------------------------------


def evaluate(
    variant: variants.Variant,
    ds,
    workloads: list,
    device: str,
    quick: bool = False,
    hw=None,
    official: bool = False,
    benchmark_factory: Callable | None = None,
    progress=None,
    source: str | None = None,
    timeout_s: float = runner.DEFAULT_TIMEOUT_S,
    on_workload=None,
) -> dict:
    """Judge and time one candidate (`runner.run`); never raises for the candidate's own failures."""
    settings = replace(QUICK if quick else FULL, timeout_s=timeout_s)
    base = {
        "candidate": variant.name,
        "language": variant.spec.language,
        "source": source or str(variant.path),
        "definition": ds.definition.name,
        "device": device,
        "mode": ("quick" if quick else "full") + (" official" if official else ""),
        "settings": {"warmup": settings.warmup, "iterations": settings.iterations, "trials": settings.trials},
    }
    if official:  # flashinfer-bench's Benchmark builds in its own subprocess and reports COMPILE_ERROR
        from .official import OfficialSettings, run_official

        try:
            solution = variants.pack(variant, ds.definition.name)
        except FibmoeError as e:
            return result(base, _rows_not_run(variant.name, workloads, judge.COMPILE_ERROR), "build", error_text(e))
        osettings = OfficialSettings(warmup=settings.warmup, iterations=settings.iterations, trials=settings.trials)
        rows, _ = run_official(
            ds,
            workloads,
            [solution],
            osettings,
            hw,
            {variant.name: variant.spec.rung},
            baseline=False,
            benchmark_factory=benchmark_factory,
            progress=progress,
        )
        return result(base, rows, "bench" if all(r["status"] == judge.PASSED for r in rows) else "check")

    reason = check.skip_reason(variant, ds, device)
    if reason:
        return result(
            base, _rows_not_run(variant.name, workloads, judge.SKIPPED), "check", f"not evaluated here: {reason}"
        )
    rows = runner.run(
        [variant], ds, workloads, device, settings, timed=True, hw=hw, progress=progress,
        on_workload=on_workload, time_after_failure=False,
    )  # fmt: skip
    bad = next((r for r in rows if r["status"] != judge.PASSED), None)
    stage = {"build": "build", "bench": "bench"}.get(bad["failed_at"], "check") if bad else "bench"
    return result(base, rows, stage)


def _rows_not_run(name: str, workloads: list, status: str) -> list[dict]:
    return [
        {"variant": name, "uuid": w.workload.uuid, "seq_len": w.workload.axes["seq_len"], "status": status}
        | dict.fromkeys(ROW_FIGURES)
        | {"message": ""}
        for w in workloads
    ]


ROW_FIGURES = (
    "latency_ms median_ms gpu_side_ms reference_ms speedup_vs_reference floor_ms fraction_of_floor max_abs_error"
    " rel_l2_error matched_ratio routing_agreement error"
).split()


def result(base: dict, rows: list[dict], stage: str, error: Optional[str] = None) -> dict:
    """The eval JSON. combined_score: mean speedup over the reference (runner.summary), 0 if anything failed."""
    passed = sum(r["status"] == judge.PASSED for r in rows)
    all_passed = bool(rows) and passed == len(rows) and error is None
    if error is None and not all_passed:
        bad = next(r for r in rows if r["status"] != judge.PASSED)
        error = f"{bad['status']} on workload {bad['uuid']} (T={bad['seq_len']}): {bad['message']}".strip()
        if bad.get("error"):
            error += "\n" + bad["error"]
    s = runner.summary(rows).get(base["candidate"], {}) if rows else {}
    timed = all_passed and all(r["speedup_vs_reference"] for r in rows)
    rel_l2 = [r["rel_l2_error"] for r in rows if r["rel_l2_error"] is not None]
    return {
        "combined_score": float(s.get("mean_speedup_vs_reference", 0.0)) if timed else 0.0,
        "passed": passed,
        "workloads": len(rows),
        "all_passed": all_passed,
        "stage": "done" if all_passed else stage,
        "error": error,
        **base,
        "mean_speedup_vs_reference": s.get("mean_speedup_vs_reference") if timed else None,
        "mean_fraction_of_floor": s.get("mean_fraction_of_floor") if timed else None,
        "mean_latency_ms": statistics.mean(r["latency_ms"] for r in rows) if timed else None,
        "max_rel_l2_error": max(rel_l2) if rel_l2 else None,
        "per_workload": rows,
    }


def ncu_workload(workloads: list):
    """The workload Nsight Compute looks at: the median T of those evaluated (the contest is mostly T~55)."""
    ordered = sorted(workloads, key=lambda w: w.workload.axes["seq_len"])
    return ordered[(len(ordered) - 1) // 2]


def add_ncu(res: dict, variant, ds, workloads, device, profile: Callable | None = None) -> dict:
    """Nsight Compute figures for the hottest kernel of one call, or {'error': ...}; never raises."""
    from . import nvtools

    trace = ncu_workload(workloads)
    entry = {"uuid": trace.workload.uuid, "seq_len": trace.workload.axes["seq_len"]}
    with tempfile.TemporaryDirectory(prefix="fibmoe-ncu-") as tmp:
        try:
            solution = variants.pack(variant, ds.definition.name)
            summary = (profile or nvtools.profile)(solution, ds, trace, device, Path(tmp) / "eval", None)
            hot = summary["hottest"]
            entry.update(
                kernel=hot["name"],
                kernel_share=hot.get("share"),
                kernels=summary["kernels"],
                gpu_time_us=summary["gpu_time_us"],
                duration_us=hot["duration_us"],
                sm_throughput_pct=hot.get("sm_throughput_pct"),
                dram_throughput_pct=hot.get("dram_throughput_pct"),
                achieved_occupancy_pct=hot.get("achieved_occupancy_pct"),
                bound=summary["bound"],
                reading=summary["reading"],
            )
        except FibmoeError as e:
            entry["error"] = str(e)
    res["ncu"] = entry
    return res
