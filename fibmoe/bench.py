"""`fibmoe bench`: the official timing protocol, the roofline floor beside every number, and results
written as JSON with provenance.

Protocol (as the contest harness runs it): per trial fresh inputs; 10 warm-up calls, then 50 timed
calls, the L2 cache flushed before each, each call timed as one span (CUDA events around the call,
so launch gaps and host syncs inside it count), arguments cloned before each call outside the span;
the trial's figure is the median; the workload's latency is the mean over trials. On CUDA this is
flashinfer-bench's own `do_bench`; on a CPU the same loop with the wall clock, labelled as such.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from . import inputs as inputs_mod
from . import judge, reference, variants
from .check import _definition_reference, call, reference_source, skip_reason
from .dataset import Dataset, routing_tensors
from .geometry import Geometry
from .roofline import Hardware, work_of


@dataclass(frozen=True)
class Settings:
    warmup: int = 10
    iterations: int = 50
    trials: int = 3
    style: str = "contest"


def _clone(args: list) -> list:
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def time_call(fn, args: list, device: str, settings: Settings) -> float:
    """Median span of one call in ms over `settings.iterations` timed calls, cold L2 on CUDA."""
    if device.startswith("cuda"):
        from flashinfer_bench.bench.timing import do_bench

        return float(
            do_bench(
                lambda a: fn(*a),
                warmup=settings.warmup,
                rep=settings.iterations,
                setup=lambda: _clone(args),
                return_mode="median",
                device=device,
            )
        )
    for _ in range(settings.warmup):
        fn(*_clone(args))
    times = []
    for _ in range(settings.iterations):
        a = _clone(args)
        t0 = time.perf_counter()
        fn(*a)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run_bench(
    chosen: list[variants.Variant],
    ds: Dataset,
    workloads: list,
    device: str,
    settings: Settings,
    hw: Hardware | None,
    progress=None,
) -> list[dict]:
    geometry = Geometry.from_definition(ds.definition)
    ref_fn = reference.run if ds.definition.reference == reference_source() else _definition_reference(ds)
    built = {}
    for v in chosen:
        reason = skip_reason(v, ds, device)
        built[v.name] = (
            (None, reason) if reason else (variants.build(variants.pack(v, ds.definition.name), ds.definition), "")
        )

    records = []
    for w in workloads:
        uuid, seq_len = w.workload.uuid, w.workload.axes["seq_len"]
        routing = routing_tensors(ds, w)
        offset = w.workload.inputs["local_expert_offset"].value
        work = work_of(geometry, routing["routing_logits"], routing["routing_bias"], offset)
        floor_ms = work.floor_s(hw) * 1e3 if hw else None
        ref_ms, per_variant = [], {v.name: {"ms": [], "status": judge.PASSED, "message": ""} for v in chosen}
        for trial in range(settings.trials):
            inp = inputs_mod.generate(ds, w, device, settings.style, routing=routing)
            if progress:
                progress(f"reference T={seq_len} {uuid[:8]} trial {trial + 1}")
            ref_out = ref_fn(*inp)
            ref_ms.append(time_call(ref_fn, inp, device, settings))
            for v in chosen:
                runnable, reason = built[v.name]
                state = per_variant[v.name]
                if reason:
                    state.update(status=judge.SKIPPED, message=reason)
                if runnable is None or state["status"] != judge.PASSED:
                    continue
                if progress:
                    progress(f"{v.name} T={seq_len} {uuid[:8]} trial {trial + 1}")
                state["status"], state["message"] = _correct(runnable, inp, ref_out, device)
                if state["status"] == judge.PASSED:
                    out = torch.empty_like(ref_out)
                    args = inp + [out] if runnable.metadata.destination_passing_style else inp
                    state["ms"].append(time_call(runnable, args, device, settings))
            del inp
        reference_ms = statistics.mean(ref_ms)
        for v in chosen:
            state = per_variant[v.name]
            latency = statistics.mean(state["ms"]) if state["status"] == judge.PASSED else None
            records.append(
                {
                    "variant": v.name,
                    "rung": v.spec.rung,
                    "uuid": uuid,
                    "seq_len": seq_len,
                    "local_expert_offset": offset,
                    "status": state["status"],
                    "message": state["message"],
                    "latency_ms": latency,
                    "trial_ms": state["ms"],
                    "reference_ms": reference_ms,
                    "floor_ms": floor_ms,
                    "active_experts": work.active_experts,
                    "local_rows": work.local_rows,
                    "bound": work.bound(hw) if hw else None,
                    "speedup_vs_reference": reference_ms / latency if latency else None,
                    "fraction_of_floor": floor_ms / latency if (latency and floor_ms) else None,
                }
            )
    _add_previous_rung_speedups(records)
    return records


def _correct(runnable, inp, ref_out, device) -> tuple[str, str]:
    """The official gate on one call before it is timed (the harness times only what passes)."""
    try:
        out = call(runnable, inp, ref_out)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001 - a failing solution is a result
        return judge.RUNTIME_ERROR, f"{type(e).__name__}: {e}".splitlines()[0][:300]
    v = judge.judge(out, ref_out, ref_out.float())
    return v.status, v.message


def _add_previous_rung_speedups(records: list[dict]) -> None:
    """speedup_vs_previous: over the nearest lower rung timed on the same workload in this run."""
    by_uuid: dict[str, list[dict]] = {}
    for r in records:
        by_uuid.setdefault(r["uuid"], []).append(r)
    for rows in by_uuid.values():
        for r in rows:
            lower = [p for p in rows if p["rung"] and r["rung"] and p["rung"] < r["rung"] and p["latency_ms"]]
            prev = max(lower, key=lambda p: p["rung"]) if lower else None
            r["previous_variant"] = prev["variant"] if prev else None
            r["speedup_vs_previous"] = prev["latency_ms"] / r["latency_ms"] if (prev and r["latency_ms"]) else None


def summary(records: list[dict]) -> dict:
    """Per variant: passed count, mean speedup over the reference (zero if any workload failed)."""
    out = {}
    for name in dict.fromkeys(r["variant"] for r in records):
        rows = [r for r in records if r["variant"] == name]
        passed = [r for r in rows if r["status"] == judge.PASSED]
        speedups = [r["speedup_vs_reference"] for r in passed]
        fractions = [r["fraction_of_floor"] for r in passed if r["fraction_of_floor"]]
        out[name] = {
            "workloads": len(rows),
            "passed": len(passed),
            "mean_speedup_vs_reference": (statistics.mean(speedups) if len(passed) == len(rows) and speedups else 0.0),
            "mean_fraction_of_floor": statistics.mean(fractions) if fractions else None,
        }
    return out
