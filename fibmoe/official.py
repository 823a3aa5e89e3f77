"""The official path: packed solutions run by flashinfer-bench's own `Benchmark`, as the contest runs them.

- `OfficialSettings` -> `BenchmarkConfig`: warm-up 10, iterations 50, trials 3, atol 1.0, rtol 0.3,
  matched ratio 0.9 (passed explicitly: the MoE evaluator would otherwise ask for 0.95), isolated runner
  (one subprocess per solution, 300 s limit). Tolerances come from `judge`, as floats (BenchmarkConfig
  rejects ints).
- The trace set is built in memory from one of our datasets (`dataset.load`): its definition, the chosen
  workloads and the packed solutions; `run_all(dump_traces=False)` so nothing is written into the dataset.
- flashinfer-bench's `Trace`/`Evaluation` objects become records shaped like `fibmoe bench`'s (same table,
  same JSON, same `runner.summary`), with the roofline floor beside every latency.
- The FlashInfer baseline solution (`flashinfer_wrapper_9sdjf3`, Blackwell only) runs beside ours when the
  dataset has it and the GPU can run it; the official score is then the mean over workloads of
  baseline latency / our latency, zeroed if any workload failed. Elsewhere it is reported unavailable.

`run_official` takes an injectable benchmark factory: flashinfer-bench's `Benchmark` refuses to start
without CUDA, and tests drive everything else on a CPU.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

from . import judge
from .errors import FibmoeError, error_text
from .runner import add_previous_rung_speedups, summary, workload_facts

BASELINE_NAME = "flashinfer_wrapper_9sdjf3"
NO_RESULT = "flashinfer-bench returned no result for this workload (its reference or its runner failed)"


@dataclass(frozen=True)
class OfficialSettings:
    """What the contest's MoE run uses; only the timing counts are ever changed (eval --quick)."""

    warmup: int = 10
    iterations: int = 50
    trials: int = 3
    atol: float = judge.ATOL
    rtol: float = judge.RTOL
    matched_ratio: float = judge.MATCHED_RATIO
    isolated: bool = True
    timeout_s: int = 300

    def is_official(self) -> bool:
        return self == OfficialSettings()

    @classmethod
    def from_dict(cls, data: dict | None) -> OfficialSettings:
        data = data or {}
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def benchmark_config(settings: OfficialSettings, definition: str, solution_names: list[str], log_dir=None):
    """The flashinfer-bench `BenchmarkConfig` for these settings (floats where it insists on floats)."""
    from flashinfer_bench import BenchmarkConfig

    kwargs = {} if log_dir is None else {"log_dir": str(log_dir)}
    try:
        return BenchmarkConfig(
            warmup_runs=int(settings.warmup),
            iterations=int(settings.iterations),
            num_trials=int(settings.trials),
            atol=float(settings.atol),
            rtol=float(settings.rtol),
            required_matched_ratio=float(settings.matched_ratio),
            use_isolated_runner=bool(settings.isolated),
            timeout_seconds=int(settings.timeout_s),
            definitions=[definition],
            solutions=list(solution_names),
            **kwargs,
        )
    except ValueError as e:
        raise FibmoeError(f"invalid benchmark settings: {e}") from None


def build_trace_set(ds, workloads: list, solutions: list):
    """An in-memory TraceSet rooted at the dataset (so its blobs resolve) holding only what this run needs."""
    from flashinfer_bench import TraceSet

    name = ds.definition.name
    for s in solutions:
        if s.definition != name:
            raise FibmoeError(f"solution {s.name} is for definition {s.definition}, not {name}")
    try:
        return TraceSet(
            root=Path(ds.root),
            definitions={name: ds.definition},
            solutions={name: list(solutions)},
            workloads={name: list(workloads)},
            traces={},
        )
    except ValueError as e:  # duplicate solution names
        raise FibmoeError(f"cannot build the trace set: {e}") from None


def default_benchmark_factory(trace_set, config):
    """flashinfer-bench's own Benchmark (it needs a CUDA device)."""
    import torch

    if not torch.cuda.is_available():
        raise FibmoeError(
            "the official run needs a CUDA GPU (flashinfer-bench's Benchmark refuses to start without one): "
            "use `fibmoe bench --remote b200`, or plain `fibmoe bench` here"
        )
    from flashinfer_bench import Benchmark

    return Benchmark(trace_set, config)


# ---- the FlashInfer baseline -------------------------------------------------------------------


def find_baseline(ds) -> tuple[Optional[object], str]:
    """(the baseline Solution, '') when the dataset has it, else (None, why not)."""
    from flashinfer_bench import Solution
    from pydantic import ValidationError

    name = ds.definition.name
    root = Path(ds.root)
    exact = root / "solutions" / "baseline" / ds.definition.op_type / name / f"{BASELINE_NAME}.json"
    candidates = [exact] if exact.is_file() else sorted((root / "solutions").rglob(f"{BASELINE_NAME}.json"))
    for path in candidates:
        try:
            sol = Solution.model_validate_json(path.read_text())
        except (OSError, ValidationError):
            continue
        if sol.definition == name:
            return sol, ""
    return None, f"the dataset has no {BASELINE_NAME} baseline solution for {name}"


def blackwell_reason(capability: tuple[int, int] | None) -> str:
    """'' when the FlashInfer baseline (trtllm block-scale MoE, Blackwell only) can run on this GPU."""
    if capability is None:
        return "no CUDA device"
    if capability[0] < 10:
        return f"the FlashInfer baseline runs on Blackwell (sm_100) only; this GPU is sm_{capability[0]}{capability[1]}"
    return ""


def cuda_capability() -> tuple[int, int] | None:
    import torch

    return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None


def choose_baseline(ds, wanted: Optional[bool], capability) -> tuple[Optional[object], str]:
    """The baseline to run beside ours, or (None, why the score will be unavailable)."""
    if wanted is False:
        return None, "baseline not requested (--no-baseline)"
    sol, why = find_baseline(ds)
    if sol is None:
        return None, why
    why = blackwell_reason(capability)
    return (None, why) if why else (sol, "")


# ---- running ---------------------------------------------------------------------------------


class _ProgressHandler(logging.Handler):
    def __init__(self, progress):
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record):
        self.progress(record.getMessage())


def run_official(
    ds,
    workloads: list,
    solutions: list,
    settings: OfficialSettings = OfficialSettings(),
    hw=None,
    rungs: dict | None = None,
    baseline: Optional[bool] = None,
    capability=None,
    benchmark_factory: Callable | None = None,
    progress=None,
) -> tuple[list[dict], dict]:
    """Run `solutions` (flashinfer-bench Solutions) on `workloads` through flashinfer-bench's Benchmark.

    Returns (records, baseline_info). `baseline`: True/None run the FlashInfer baseline where possible,
    False never; `capability` is the GPU's (major, minor), looked up when None.
    """
    if not solutions:
        raise FibmoeError("no solution to run")
    if capability is None and baseline is not False:
        capability = cuda_capability()
    base_sol, why = choose_baseline(ds, baseline, capability)
    all_solutions = list(solutions) + ([base_sol] if base_sol is not None else [])
    trace_set = build_trace_set(ds, workloads, all_solutions)
    config = benchmark_config(settings, ds.definition.name, [s.name for s in all_solutions])

    bench = (benchmark_factory or default_benchmark_factory)(trace_set, config)
    logger = logging.getLogger("flashinfer_bench.bench.benchmark")
    handler, old_level = None, logger.level
    if progress:
        handler = _ProgressHandler(progress)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        result = bench.run_all(dump_traces=False)
    finally:
        bench.close()
        if handler:
            logger.removeHandler(handler)
            logger.setLevel(old_level)

    traces = list((getattr(result, "traces", None) or {}).get(ds.definition.name, []))
    meta = {s.name: {"rung": (rungs or {}).get(s.name), "baseline": False} for s in solutions}
    if base_sol is not None:
        meta[base_sol.name] = {"rung": None, "baseline": True}
    records = records_from_traces(traces, ds, workloads, meta, hw)
    info = {"name": BASELINE_NAME, "ran": base_sol is not None, "reason": why}
    add_baseline_speedups(records, why or "")
    return records, info


# ---- conversion --------------------------------------------------------------------------------


def _message(ev) -> str:
    """One line for the table: the error's last line, or the numbers that failed the tolerance."""
    if ev is None:
        return NO_RESULT
    status = _status(ev)
    if status == judge.PASSED:
        return ""
    c = ev.correctness
    if status == judge.INCORRECT_NUMERICAL and c is not None:
        ratio = (c.extra or {}).get("matched_ratio")
        if ratio is not None:
            return f"matched ratio {ratio:.4f} < {judge.MATCHED_RATIO} (max abs err {c.max_absolute_error:.3g})"
        return f"max abs err {c.max_absolute_error:.3g}, max rel err {c.max_relative_error:.3g}"
    lines = [line.strip() for line in (ev.log or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else status


def _status(ev) -> str:
    return ev.status.value if hasattr(ev.status, "value") else str(ev.status)


def records_from_traces(traces: list, ds, workloads: list, meta: dict, hw=None) -> list[dict]:
    """One record per (workload, solution), in workload order, shaped like `fibmoe bench`'s records.

    `meta`: solution name -> {"rung": int|None, "baseline": bool}, in the order to report them. A pair
    the harness returned nothing for (it logs and skips a workload whose reference failed) is a failure.
    """
    by_key = {(t.workload.uuid, t.solution): t for t in traces if t.solution is not None}
    records = []
    for wl in workloads:
        uuid = wl.workload.uuid
        facts = workload_facts(ds, wl, hw)
        for name, m in meta.items():
            trace = by_key.get((uuid, name))
            ev = trace.evaluation if trace is not None else None
            status = _status(ev) if ev is not None else judge.RUNTIME_ERROR
            perf = ev.performance if ev is not None else None
            corr = ev.correctness if ev is not None else None
            passed = status == judge.PASSED and perf is not None
            latency = perf.latency_ms if passed else None
            floor_ms = facts["floor_ms"]
            records.append(
                {
                    "variant": name,
                    "rung": m.get("rung"),
                    "baseline": bool(m.get("baseline")),
                    "uuid": uuid,
                    **{k: facts[k] for k in ("seq_len", "local_expert_offset")},
                    "status": status,
                    "message": _message(ev),
                    "error": None if passed else (error_text(ev.log) if ev is not None else NO_RESULT),
                    "latency_ms": latency,
                    "median_ms": None,  # the Benchmark keeps only each trial's mean
                    "trial_ms": [],
                    "reference_ms": perf.reference_latency_ms if perf is not None else None,
                    "speedup_vs_reference": perf.speedup_factor if passed else None,
                    "max_abs_error": corr.max_absolute_error if corr is not None else None,
                    "max_rel_error": corr.max_relative_error if corr is not None else None,
                    "matched_ratio": (corr.extra or {}).get("matched_ratio") if corr is not None else None,
                    "rel_l2_error": None,  # figures of our own judge, not the Benchmark's
                    "routing_agreement": None,
                    "failed_at": None if passed else "run",
                    "floor_ms": floor_ms,
                    "active_experts": facts["active_experts"],
                    "local_rows": facts["local_rows"],
                    "bound": facts["bound"],
                    "fraction_of_floor": floor_ms / latency if (latency and floor_ms) else None,
                    "hardware": ev.environment.hardware if ev is not None else None,
                }
            )
    add_previous_rung_speedups(records)
    return records


def add_baseline_speedups(records: list[dict], unavailable: str = "") -> None:
    """baseline_ms and speedup_vs_baseline on each of our records, from the baseline's record of the
    same workload in the same run (None where it did not run or did not pass)."""
    base = {r["uuid"]: r for r in records if r.get("baseline")}
    for r in records:
        if r.get("baseline"):
            continue
        b = base.get(r["uuid"])
        b_ms = b["latency_ms"] if b is not None and b["status"] == judge.PASSED else None
        r["baseline_ms"] = b_ms
        r["speedup_vs_baseline"] = b_ms / r["latency_ms"] if (b_ms and r["latency_ms"]) else None
        if b_ms is None:
            r["baseline_note"] = unavailable or (
                f"{BASELINE_NAME} did not pass on this workload" if b is not None else f"{BASELINE_NAME} did not run"
            )


# ---- score -------------------------------------------------------------------------------------


def official_score(records: list[dict], total_workloads: int | None = None) -> dict:
    """Per solution of ours: the contest score (mean over workloads of baseline / our latency, zero if
    any workload failed; None where the baseline is missing) beside the mean speedup over the reference."""
    ours = [r for r in records if not r.get("baseline")]
    base_summary = summary(ours)
    out = {}
    for name, s in base_summary.items():
        rows = [r for r in ours if r["variant"] == name]
        failed = [r for r in rows if r["status"] != judge.PASSED]
        note = ""
        if failed:
            score = 0.0
            note = f"zeroed: {len(failed)} of {len(rows)} workload(s) failed"
        elif any(r.get("speedup_vs_baseline") is None for r in rows):
            score = None
            why = next((r.get("baseline_note") for r in rows if r.get("baseline_note")), "") or "no baseline"
            note = f"unavailable: {why}"
        else:
            score = statistics.mean(r["speedup_vs_baseline"] for r in rows)
        if total_workloads is not None and len(rows) != total_workloads:
            note = (note + "; " if note else "") + f"over {len(rows)} of {total_workloads} workloads"
        out[name] = {**s, "score_vs_baseline": score, "score_note": note}
    return out


def any_failed(records: list[dict]) -> bool:
    """Did any of our solutions (not the baseline) fail a workload?"""
    return any(r["status"] != judge.PASSED for r in records if not r.get("baseline"))


def payload(ds, records: list[dict], baseline_info: dict, settings: OfficialSettings, hw, provenance: dict) -> dict:
    """The JSON that `fibmoe bench` writes, with the official settings and score added."""
    return {
        "provenance": provenance,
        "definition": ds.definition.name,
        "hardware": hw.__dict__ if hw else None,
        "summary": official_score(records, len(ds.workloads)),
        "official": {
            "settings": asdict(settings),
            "official_settings": settings.is_official(),
            "baseline": baseline_info,
        },
        "records": records,
    }


def timer_label(settings: OfficialSettings) -> str:
    runner = "isolated runner" if settings.isolated else "persistent runner"
    return f"flashinfer-bench Benchmark ({runner}; cuda-events span, L2 flushed)"


def run(
    ds,
    workloads: list,
    solutions: list,
    device: str,
    settings: OfficialSettings = OfficialSettings(),
    hw=None,
    extra_provenance: dict | None = None,
    **options,
) -> dict:
    """`run_official` and its payload with provenance: the one entry used locally and on Modal.
    `options` are `run_official`'s (rungs, baseline, capability, benchmark_factory, progress)."""
    from . import results

    records, info = run_official(ds, workloads, solutions, settings, hw, **options)
    prov = results.provenance(
        device, settings, {"timer": timer_label(settings), "mode": "official", **(extra_provenance or {})}
    )
    return payload(ds, records, info, settings, hw, prov)
