"""`fibmoe eval`: the evaluator an evolutionary search or a coding agent calls on one candidate.

Pack it, build it (as flashinfer-bench does), check it on fresh inputs against the reference, and, when
every workload passes, bench it with the official timing protocol. The result is one JSON object:
`combined_score` is the mean speedup over the reference across the workloads, 0 when any failed
(the contest's zeroing rule; `bench.summary` computes it); per-workload latency, speedup and error
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
import traceback
from pathlib import Path
from typing import Callable, Optional

from pydantic import ValidationError

from . import bench, check, judge, variants
from .errors import FibmoeError

QUICK = bench.Settings(warmup=3, iterations=10, trials=1)
FULL = bench.Settings()
QUICK_WORKLOADS = 5
ERROR_CHARS = 4000
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


def error_text(exc: BaseException) -> str:
    """The whole story of a failure: the exception chain, with the original traceback, trimmed."""
    root = exc.__cause__ or exc.__context__ or exc
    text = "".join(traceback.format_exception(type(root), root, root.__traceback__))
    if root is not exc:
        text = f"{exc}\n{text}"
    return text.strip()[-ERROR_CHARS:]


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
) -> dict:
    """Check then bench one candidate; never raises for the candidate's own failures."""
    settings = QUICK if quick else FULL
    base = {
        "candidate": variant.name,
        "language": variant.spec.language,
        "source": source or str(variant.path),
        "definition": ds.definition.name,
        "device": device,
        "mode": ("quick" if quick else "full") + (" official" if official else ""),
        "settings": {"warmup": settings.warmup, "iterations": settings.iterations, "trials": settings.trials},
    }
    try:
        solution = variants.pack(variant, ds.definition.name)
        if not official:  # the official runner builds in its own subprocess and reports COMPILE_ERROR
            variants.build(solution, ds.definition)
    except FibmoeError as e:
        return result(base, _rows_not_run(variant.name, workloads, "COMPILE_ERROR"), "build", error_text(e))

    if official:
        from .official import OfficialSettings, run_official

        osettings = OfficialSettings(warmup=settings.warmup, iterations=settings.iterations, trials=settings.trials)
        records, _ = run_official(
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
        rows = [_row(r, r) for r in records]
        return result(base, rows, "bench" if all(r["status"] == judge.PASSED for r in rows) else "check")

    reason = check.skip_reason(variant, ds, device)
    if reason:
        return result(
            base, _rows_not_run(variant.name, workloads, judge.SKIPPED), "check", f"not evaluated here: {reason}"
        )
    cases = check.run_check([variant], ds, workloads, device, settings.trials, settings.style, progress)
    checked = [c.to_dict() for c in cases]
    if not all(c["status"] == judge.PASSED for c in checked):
        return result(base, [_row(c, None) for c in checked], "check")
    try:
        records = bench.run_bench([variant], ds, workloads, device, settings, hw, progress)
    except Exception as e:  # noqa: BLE001 - a candidate that passed the check can still crash while timed
        rows = [{**_row(c, None), "status": judge.RUNTIME_ERROR} for c in checked]
        return result(base, rows, "bench", error_text(e))
    by_uuid = {r["uuid"]: r for r in records}
    return result(base, [_row(c, by_uuid.get(c["uuid"])) for c in checked], "bench")


def _rows_not_run(name: str, workloads: list, status: str) -> list[dict]:
    return [
        _row({"variant": name, "uuid": w.workload.uuid, "seq_len": w.workload.axes["seq_len"], "status": status}, None)
        for w in workloads
    ]


def _row(checked: dict, timed: Optional[dict]) -> dict:
    """One workload's figures: errors from the check, timing from the bench (either may be missing)."""
    t = timed or {}
    status = t.get("status", checked.get("status"))
    return {
        "variant": checked["variant"],
        "uuid": checked["uuid"],
        "seq_len": checked["seq_len"],
        "status": status,
        "latency_ms": t.get("latency_ms"),
        "reference_ms": t.get("reference_ms"),
        "speedup_vs_reference": t.get("speedup_vs_reference"),
        "floor_ms": t.get("floor_ms"),
        "fraction_of_floor": t.get("fraction_of_floor"),
        "max_abs_error": checked.get("max_abs_error"),
        "rel_l2_error": checked.get("rel_l2_error"),
        "matched_ratio": checked.get("matched_ratio"),
        "routing_agreement": checked.get("routing_agreement"),
        "message": t.get("message") or checked.get("message") or "",
        **({"error": t["error"]} if t.get("error") else {}),
    }


def result(base: dict, rows: list[dict], stage: str, error: Optional[str] = None) -> dict:
    """The eval JSON. combined_score: mean speedup over the reference (bench.summary), 0 if anything failed."""
    passed = sum(r["status"] == judge.PASSED for r in rows)
    all_passed = bool(rows) and passed == len(rows) and error is None
    if error is None and not all_passed:
        bad = next(r for r in rows if r["status"] != judge.PASSED)
        error = f"{bad['status']} on workload {bad['uuid']} (T={bad['seq_len']}): {bad['message']}".strip()
        if bad.get("error"):
            error += "\n" + bad["error"]
    s = bench.summary(rows).get(base["candidate"], {}) if rows else {}
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
