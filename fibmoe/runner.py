"""Run one solution on one workload's inputs: the one place where fibmoe calls, judges and times a solution.

`check`, `bench` and `eval` all go through `run` (every workload, every variant, a record each, handed
over as each workload ends); the official path (flashinfer-bench's own `Benchmark`) builds the same
records with the same figures (`workload_facts`, `add_previous_rung_speedups`, `summary`).

One job is one variant (or the reference) on one workload. For each trial: fresh inputs drawn from a
seed (every variant of a run sees the same inputs), the reference's output, one call into a
NaN-poisoned output (an element left unwritten fails), the verdict (`judge`: the official rule, plus
relative L2 error against the fp32 reference and routing agreement); then, when timed, flashinfer-bench's
own `do_bench` with its argument cloning, exactly as its `time_runnable` calls it, keeping every span:
the latency is the MEAN of the spans (what the contest scores), the median is reported beside it. On a
CPU (the Triton interpreter) the same loop with the wall clock.

Isolation: each variant's jobs run in a child process of its own (`Worker`, forked from a forkserver that
has torch imported), in a session of its own; timed on a GPU, a fresh child for every workload, as the
contest's isolated runner does. A job that outlives its limit is a TIMEOUT: the child is
killed with its whole process group (a hung CUDA context or a `time.sleep` cannot stop that) and the next
job gets a fresh one.
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import signal
import statistics
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

from . import judge
from .errors import FibmoeError, error_text
from .processes import die_with_parent

DEFAULT_TIMEOUT_S = 300  # the contest's limit for one solution's subprocess
STARTUP_S = 300  # a child's start (Python, torch, flashinfer-bench imports) on a busy machine
DENSE_GEMM_MIN_T = 2048  # above this T, bench times a dense cuBLAS FP8 GEMM of the same FLOPs by default


@dataclass(frozen=True)
class Settings:
    warmup: int = 10
    iterations: int = 50
    trials: int = 3
    style: str = "contest"
    timeout_s: float = DEFAULT_TIMEOUT_S  # per job: one variant's trials on one workload
    seed: Optional[int] = None  # inputs of trial t of workload i are drawn from seed + 1000 i + t
    dense_gemm: Optional[bool] = None  # time cuBLAS FP8 GEMMs of the workload's FLOPs; None: when T > 2048


@dataclass(frozen=True)
class Job:
    """What a child process runs: `kind` is solution, reference, launch or dense_gemm."""

    kind: str
    device: str
    settings: Settings
    definition: str = ""
    dataset_root: str = ""
    uuid: str = ""
    solution_json: str = ""
    judge: bool = True
    timed: bool = False
    seed: int = 0
    rows: int = 0  # dense_gemm: the GEMMs' M (the workload's local rows)


# ---- calling, judging, timing (in the child) -------------------------------------------------------------


def call(runnable, inp: list, out_like):
    """Call a built solution the way the harness does; DPS gets a NaN-poisoned output to fill."""
    import torch

    if runnable.metadata.destination_passing_style:
        out = torch.full_like(out_like, float("nan"))
        runnable(*inp, out)
        return out
    return runnable(*inp)


def time_spans(fn: Callable, args: list, device: str, warmup: int, iterations: int) -> list[float]:
    """Every timed span of `fn(*args)` in ms, arguments cloned outside the span.

    On CUDA this is flashinfer-bench's `time_runnable` with `return_mode="all"`: the same device lock,
    the same `do_bench` (L2 flushed and the device synchronized before each span, CUDA events around
    the call) and the same cloning; `time_runnable` itself returns only the mean.
    """
    if device.startswith("cuda"):
        from flashinfer_bench.bench.timing import _clone_args, _device_lock, do_bench

        with _device_lock(device):
            return do_bench(
                lambda cloned: fn(*cloned),
                warmup=warmup,
                rep=iterations,
                setup=lambda: _clone_args(args),
                return_mode="all",
                device=device,
            )
    from flashinfer_bench.bench.timing import _clone_args

    for _ in range(warmup):
        fn(*_clone_args(args))
    spans = []
    for _ in range(iterations):
        cloned = _clone_args(args)
        t0 = time.perf_counter()
        fn(*cloned)
        spans.append((time.perf_counter() - t0) * 1e3)
    return spans


BUSY_CYCLES = 1_000_000  # ~0.5 ms of GPU spin at 2 GHz: longer than any call's host path


def queued_spans(fn: Callable, args: list, device: str, iterations: int) -> list[float]:
    """The spans (ms) of `fn(*args)` queued behind a busy GPU: as `time_spans` (flashinfer-bench's cache
    flush and cloning, CUDA events around the call), but a spin kernel runs between the flush and the
    start event, so the call's launches are queued before the GPU reaches its span. What is left is the
    GPU's side of a call alone; the harness's span (the GPU idle at its start) adds the host's launch
    path, which a process can draw slow or fast by 9-42 us at small T (rung 4 NOTES v79-v80). A call that
    waits for the GPU inside (a host sync) waits out the spin too, and its host time after that stays in."""
    import torch
    from flashinfer_bench.bench.timing import _clear_cache, _clone_args, _device_lock, _get_empty_cache_for_benchmark

    with _device_lock(device), torch.cuda.device(device):
        cache = _get_empty_cache_for_benchmark(device)
        events = []
        for _ in range(iterations):
            _clear_cache(cache)
            cloned = _clone_args(args)
            torch.cuda.synchronize()
            torch.cuda._sleep(BUSY_CYCLES)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*cloned)
            end.record()
            events.append((start, end))
        torch.cuda.synchronize()
        return [s.elapsed_time(e) for s, e in events]


def failure_place(exc: BaseException, package_dir: Optional[Path]) -> str:
    """'file.py:LINE in func' of the innermost traceback frame inside the candidate's own sources."""
    if package_dir is None:
        return ""
    root = str(package_dir)
    place = ""
    seen: set[int] = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:  # the chain too: a builder may wrap the kernel's error
        seen.add(id(e))
        for frame in traceback.extract_tb(e.__traceback__):
            if frame.filename.startswith(root):
                place = f"{os.path.relpath(frame.filename, root)}:{frame.lineno} in {frame.name}"
        if place:
            return place
        e = e.__cause__ or e.__context__
    return place


def failure_verdict(exc: BaseException, package_dir: Optional[Path], status: str = judge.RUNTIME_ERROR):
    last = traceback.format_exception_only(type(exc), exc)[-1].strip()
    place = failure_place(exc, package_dir)
    message = f"{last[:300]} (at {place})" if place else last[:300]
    return judge.Verdict(status, message=message, error=error_text(exc))


class Session:
    """The child's state between jobs: datasets and the one built solution (built once per child)."""

    def __init__(self):
        self.datasets: dict = {}
        self.built: dict = {}  # solution JSON -> (runnable, package dir) or the build failure

    def dataset(self, job: Job):
        from . import dataset

        key = (job.definition, job.dataset_root)
        if key not in self.datasets:
            self.datasets[key] = dataset.load(job.definition, job.dataset_root)
        return self.datasets[key]

    def build(self, job: Job, ds):
        from . import variants

        if job.solution_json not in self.built:
            try:
                solution = variants.solution_from_json(job.solution_json)
                runnable = variants.build(solution, ds.definition)
                module = variants.module_of(runnable)
                package = Path(module.__file__).parent if module is not None and module.__file__ else None
                self.built[job.solution_json] = (runnable, package)
            except Exception as e:  # noqa: BLE001 - the candidate's build failure is its verdict
                self.built[job.solution_json] = e
        return self.built[job.solution_json]

    def execute(self, job: Job) -> dict:
        try:
            if job.kind in ("launch", "dense_gemm"):
                from . import probes

                return {"spans": probes.run(job)}
            return self._workload(job)
        except Exception as e:  # noqa: BLE001 - a harness failure comes back as text, never a hang
            return {"harness_error": error_text(e)}

    def _workload(self, job: Job) -> dict:
        import torch

        from . import inputs
        from .dataset import routing_tensors

        ds = self.dataset(job)
        trace = next(w for w in ds.workloads if w.workload.uuid == job.uuid)
        if job.kind == "reference":
            fn, package, dps = reference_fn(ds), None, False
        else:
            built = self.build(job, ds)
            if isinstance(built, BaseException):
                v = failure_verdict(built, None, judge.COMPILE_ERROR)
                return {"trials": [{**v.to_dict(), "phase": "build"}]}
            fn, package = built
            dps = fn.metadata.destination_passing_style
        s = job.settings
        routing = routing_tensors(ds, trace)
        trials = []
        for t in range(s.trials):
            torch.manual_seed(job.seed + t)
            inp = inputs.generate(ds, trace, job.device, s.style, routing=routing)
            trial = {"status": judge.PASSED}
            if job.judge:
                trial = {**self._judge(fn, inp, ds, job.device, package).to_dict(), "phase": "check"}
                if trial["status"] != judge.PASSED:
                    trials.append(trial)
                    break
            if job.timed:
                from flashinfer_bench.bench.evaluators.utils import allocate_outputs

                if job.device.startswith("cuda") and job.judge:
                    # the check computed the reference here (GBs of fp32 temporaries, cached by torch's
                    # allocator); the contest's solution process never does: time it without that state
                    torch.cuda.empty_cache()

                # as the harness times it: DPS gets an output from torch.empty, allocated outside the span
                args = list(inp) + (allocate_outputs(ds.definition, inp, job.device) if dps else [])
                try:
                    spans = time_spans(fn, args, job.device, s.warmup, s.iterations)
                    if job.device.startswith("cuda") and job.kind != "reference":  # (the reference syncs inside)
                        trial["queued_ms"] = [float(x) for x in queued_spans(fn, args, job.device, s.iterations)]
                except Exception as e:  # noqa: BLE001 - a candidate can pass its check and crash while timed
                    trials.append({**failure_verdict(e, package).to_dict(), "phase": "bench"})
                    break
                trial["spans_ms"] = [float(x) for x in spans]
            trials.append(trial)
            del inp
        if job.device.startswith("cuda"):
            torch.cuda.empty_cache()  # the next child gets the memory back
        return {"trials": trials}

    def _judge(self, fn, inp, ds, device, package) -> judge.Verdict:
        import torch

        from . import reference, variants

        ref_bf16, ref32 = reference_outputs(ds, inp)
        try:
            with torch.no_grad():
                out = call(fn, inp, ref_bf16)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - the solution's failure is a verdict, not a crash
            return failure_verdict(e, package)
        verdict = judge.judge(out, ref_bf16, ref32)
        route = getattr(variants.module_of(fn), "route", None)
        if route is not None:
            try:
                experts = route(inp[0], inp[1], inp[9])[0]
                verdict.routing_agreement = judge.routing_agreement(experts, reference.route(inp[0], inp[1], inp[9])[0])
            except Exception as e:  # noqa: BLE001
                verdict.message = (verdict.message + f"; route() failed: {e}").strip("; ")
        return verdict


def reference_source() -> str:
    from .definition import REFERENCE_SOURCE

    return REFERENCE_SOURCE.read_text()


def reference_fn(ds):
    """The definition's reference as a callable: ours in-process, anyone else's built by flashinfer-bench."""
    from . import reference

    if ds.definition.reference == reference_source():
        return reference.run
    from flashinfer_bench.compile import BuilderRegistry

    return BuilderRegistry.get_instance().build_reference(ds.definition)


def reference_outputs(ds, inp: list):
    """(bf16 output as the definition's reference computes it, our fp32 result before the cast)."""
    import torch

    from . import reference

    ref32 = reference.forward(*inp)
    if ds.definition.reference == reference_source():
        return ref32.to(torch.bfloat16), ref32
    return reference_fn(ds)(*inp), ref32  # someone else's definition: judge by its reference


# ---- the child process ---------------------------------------------------------------------------------

_FORKSERVER = None


def _context():
    """Children are forked from a forkserver that imported torch and flashinfer-bench once (a fresh
    interpreter per child would cost seconds each); the server itself never touches CUDA."""
    global _FORKSERVER
    if _FORKSERVER is None:
        _FORKSERVER = multiprocessing.get_context("forkserver")
        _FORKSERVER.set_forkserver_preload(["torch", "flashinfer_bench", "fibmoe.runner"])
    return _FORKSERVER


def _child(conn) -> None:
    """A child's life: a session (process group) of its own, then jobs until the parent hangs up. Its
    own session takes it out of the starter's process group, so it must die with its parent (the
    forkserver, which dies with the starter): a killed `fibmoe eval` must not leave a hung candidate."""
    parent = os.getppid()
    os.setsid()
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    from .triton_env import let_interpreter_loops_take_runtime_bounds

    let_interpreter_loops_take_runtime_bounds()  # the forkserver's preload did not run the CLI's setup
    conn.send({"ready": True})
    session = Session()
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        conn.send(session.execute(job))


class Worker:
    """One child process that runs the jobs of one variant, in a session (process group) of its own."""

    def __init__(self):
        self.proc = None
        self.conn = None

    def run(self, job: Job, timeout_s: float) -> dict:
        """The job's result; {"timeout": s} or {"died": exit status} when it did not come back."""
        if self.proc is None:
            ctx = _context()
            self.conn, theirs = ctx.Pipe()
            self.proc = ctx.Process(target=_child, args=(theirs,), name="fibmoe-runner")
            self.proc.start()
            theirs.close()
            if not self._answer(STARTUP_S):  # its start does not count against the job's limit
                return {"died": self.kill()}
        try:
            self.conn.send(job)
        except OSError:
            return {"died": self.kill()}
        if not self._answer(timeout_s):
            if self.proc.is_alive():
                self.kill()
                return {"timeout": timeout_s}
            return {"died": self.kill()}
        return self.answer

    def _answer(self, timeout_s: float) -> bool:
        try:
            if self.conn.poll(timeout_s):
                self.answer = self.conn.recv()
                return True
        except (EOFError, OSError):
            pass
        return False

    def kill(self) -> Optional[int]:
        """Kill the child and everything it started; its exit status."""
        if self.proc is None:
            return None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            self.proc.kill()
        self.proc.join()
        code = self.proc.exitcode
        self.conn.close()
        self.proc = self.conn = None
        return code

    def close(self) -> None:
        if self.proc is None:
            return
        self.conn.close()  # end of jobs: the child returns
        self.proc.join(timeout=10)
        self.kill()


# ---- the run (in the parent) ---------------------------------------------------------------------------


def workload_facts(ds, trace, hw) -> dict:
    """What a workload's routing makes the layer touch, and its roofline floor on `hw` (None: no floor)."""
    from .dataset import routing_tensors
    from .geometry import Geometry
    from .roofline import work_of

    w = trace.workload
    offset = w.inputs["local_expert_offset"].value
    routing = routing_tensors(ds, trace)
    work = work_of(Geometry.from_definition(ds.definition), routing["routing_logits"], routing["routing_bias"], offset)
    return {
        "uuid": w.uuid,
        "seq_len": w.axes["seq_len"],
        "local_expert_offset": offset,
        "floor_ms": work.floor_s(hw) * 1e3 if hw else None,
        "active_experts": work.active_experts,
        "local_rows": work.local_rows,
        "bound": work.bound(hw) if hw else None,
    }


def _mean(xs):
    return statistics.mean(xs) if xs else None


def record(name: str, rung, facts: dict, result: dict, settings: Settings, reference_ms=None) -> dict:
    """One (variant, workload) record from a job's result: the worst trial decides; latency = mean span."""
    trials = result.get("trials", [])
    failed = next((t for t in trials if t["status"] != judge.PASSED), None)
    status = failed["status"] if failed else judge.PASSED
    message, error, failed_at = (
        (failed.get("message", ""), failed.get("error"), failed.get("phase")) if failed else ("", None, None)
    )
    if "timeout" in result:
        status, failed_at = judge.TIMEOUT, "run"
        message = f"no result within {result['timeout']:g} s (--timeout): its process group was killed"
    elif "died" in result:
        status, failed_at = judge.RUNTIME_ERROR, "run"
        message = f"the process running it died (exit status {result['died']}): a crash in native code?"
    elif "harness_error" in result:
        status, failed_at, error = judge.RUNTIME_ERROR, "run", result["harness_error"]
        message = "harness error: " + error.strip().splitlines()[-1][:300]
    elif "skipped" in result:
        status, message = judge.SKIPPED, result["skipped"]

    def worst(key, pick=max):
        vals = [t[key] for t in trials if t.get(key) is not None]
        return pick(vals) if vals else None

    passed = status == judge.PASSED
    timed = [t["spans_ms"] for t in trials if "spans_ms" in t]
    trial_ms = [statistics.mean(s) for s in timed]
    latency = _mean(trial_ms) if passed and timed else None
    queued = [statistics.mean(t["queued_ms"]) for t in trials if t.get("queued_ms")]
    floor_ms = facts.get("floor_ms")
    return {
        "variant": name,
        "rung": rung,
        **facts,
        "status": status,
        "message": message,
        "error": error,
        "failed_at": failed_at,
        "max_abs_error": worst("max_abs_error"),
        "max_rel_error": worst("max_rel_error"),
        "rel_l2_error": worst("rel_l2_error"),
        "matched_ratio": worst("matched_ratio", min),
        "routing_agreement": worst("routing_agreement", min),
        "latency_ms": latency,
        "median_ms": statistics.median([x for s in timed for x in s]) if latency else None,
        "trial_ms": trial_ms if latency else [],
        "gpu_side_ms": _mean(queued) if latency else None,  # the same calls queued behind a busy GPU
        "reference_ms": reference_ms,
        "speedup_vs_reference": reference_ms / latency if (latency and reference_ms) else None,
        "fraction_of_floor": floor_ms / latency if (latency and floor_ms) else None,
        "trials": [{k: v for k, v in t.items() if k not in ("spans_ms", "queued_ms", "error")} for t in trials],
    }


def add_previous_rung_speedups(records: list[dict]) -> None:
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
        speedups = [r["speedup_vs_reference"] for r in passed if r.get("speedup_vs_reference")]
        fractions = [r["fraction_of_floor"] for r in passed if r.get("fraction_of_floor")]
        out[name] = {
            "workloads": len(rows),
            "passed": len(passed),
            "mean_speedup_vs_reference": (
                statistics.mean(speedups) if len(passed) == len(rows) and len(speedups) == len(rows) else 0.0
            ),
            "mean_fraction_of_floor": statistics.mean(fractions) if fractions else None,
        }
    return out


def resolve_seed(settings: Settings) -> Settings:
    return settings if settings.seed is not None else replace(settings, seed=secrets.randbelow(2**31))


def run(
    chosen: list,
    ds,
    workloads: list,
    device: str,
    settings: Settings,
    timed: bool,
    hw=None,
    progress: Optional[Callable[[str], None]] = None,
    on_workload: Optional[Callable[[list[dict]], None]] = None,
    time_after_failure: bool = True,
) -> list[dict]:
    """Every variant on every workload, each in its own child process; a record per pair.

    `timed`: also time each passing variant and the reference (bench, eval); otherwise judge only (check).
    `on_workload(records so far)` is called as each workload ends, so a caller can write them at once.
    `time_after_failure=False` (eval) stops timing once a workload failed: the score is 0 anyway.
    """
    from .check import skip_reason
    from .variants import pack, solution_json

    settings = resolve_seed(settings)
    prepared = {}
    for v in chosen:
        reason = skip_reason(v, ds, device)
        try:
            prepared[v.name] = (
                ({"skipped": reason}, None) if reason else (None, solution_json(pack(v, ds.definition.name)))
            )
        except FibmoeError as e:  # a variant that does not pack fails alone; the others run
            prepared[v.name] = (
                {"trials": [{**failure_verdict(e, None, judge.COMPILE_ERROR).to_dict(), "phase": "build"}]},
                None,
            )
    workers = {name: Worker() for name in [*prepared, "(harness)"]}
    records: list[dict] = []
    common = {"device": device, "settings": settings, "definition": ds.definition.name, "dataset_root": str(ds.root)}
    try:
        for i, trace in enumerate(workloads):
            facts = workload_facts(ds, trace, hw)
            tag = f"T={facts['seq_len']} {facts['uuid'][:8]}"
            base = {**common, "uuid": facts["uuid"], "seed": settings.seed + 1000 * i}
            timing = timed and (
                time_after_failure or all(r["status"] in (judge.PASSED, judge.SKIPPED) for r in records)
            )
            ref_ms = None
            if timing and any(sol for _, sol in prepared.values()):
                if progress:
                    progress(f"reference {tag}")
                res = workers["(harness)"].run(Job("reference", judge=False, timed=True, **base), settings.timeout_s)
                ref = record("reference", None, facts, res, settings)
                ref_ms = ref["latency_ms"]
            rows = []
            for v in chosen:
                early, sol = prepared[v.name]
                if early is not None:
                    res = early
                else:
                    if progress:
                        progress(f"{v.name} {tag} ({settings.trials} trial(s){', timed' if timing else ''})")
                    res = workers[v.name].run(
                        Job("solution", solution_json=sol, timed=timing, **base), settings.timeout_s
                    )
                    if timing and device.startswith("cuda"):
                        # as the contest's isolated runner: a fresh process per solution and workload (state
                        # left by the previous workload's calls slowed host-bound T = 1 by up to 35%)
                        workers[v.name].close()
                rows.append(record(v.name, v.spec.rung, facts, res, settings, ref_ms))
            if timing and _wants_dense_gemm(settings, device, facts["seq_len"]):
                if progress:
                    progress(f"cuBLAS FP8 GEMMs of the same FLOPs {tag}")
                res = workers["(harness)"].run(Job("dense_gemm", rows=facts["local_rows"], **base), settings.timeout_s)
                dense_ms = _mean(res.get("spans")) if "spans" in res else None
                for r in rows:
                    r["dense_gemm_ms"] = dense_ms
                    r["x_dense_gemm"] = r["latency_ms"] / dense_ms if (dense_ms and r["latency_ms"]) else None
            add_previous_rung_speedups(rows)
            records.extend(rows)
            if on_workload:
                on_workload(records)
    finally:
        for w in workers.values():
            w.close()
    return records


def _wants_dense_gemm(settings: Settings, device: str, seq_len: int) -> bool:
    if not device.startswith("cuda") or settings.dense_gemm is False:
        return False
    return bool(settings.dense_gemm) or seq_len > DENSE_GEMM_MIN_T


def launch_spans(device: str, settings: Settings) -> dict:
    """The span of an empty Triton kernel launch and of an empty Python call, timed in a child exactly as a
    solution is (same protocol, same counts): how much of a gap to the floor is launch, not kernel."""
    worker = Worker()
    try:
        res = worker.run(Job("launch", device=device, settings=settings), settings.timeout_s)
    finally:
        worker.close()
    if "spans" not in res:
        return {"error": res.get("harness_error") or f"no result: {res}"}
    return {name: {"mean_ms": _mean(s), "median_ms": statistics.median(s)} for name, s in res["spans"].items()}
