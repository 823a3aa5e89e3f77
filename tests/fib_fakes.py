"""Shared fakes for the official/remote/eval/nvtools tests: hand-built flashinfer-bench evaluations, a
fake runner under flashinfer-bench's real `Benchmark`, small dataset copies, fake tools on PATH."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

from fibmoe import dataset
from fibmoe.geometry import SMALL

SMALL_NAME = SMALL.name


def evaluation(status="PASSED", latency=None, ref=20.0, log="", matched=0.999, abs_err=0.5, hardware="NVIDIA B200"):
    """A flashinfer-bench Evaluation as its evaluators build them (correctness/performance by status)."""
    from flashinfer_bench.data import Correctness, Environment, Evaluation, EvaluationStatus, Performance

    status = EvaluationStatus(status)
    corr = perf = None
    if status in (EvaluationStatus.PASSED, EvaluationStatus.INCORRECT_NUMERICAL):
        corr = Correctness(max_relative_error=0.2, max_absolute_error=abs_err, extra={"matched_ratio": matched})
    if status == EvaluationStatus.PASSED:
        perf = Performance(latency_ms=latency, reference_latency_ms=ref, speedup_factor=ref / latency)
    return Evaluation(
        status=status,
        environment=Environment(hardware=hardware, libs={"torch": "2.11.0"}),
        timestamp="2026-11-21T00:00:00",
        log=log,
        correctness=corr,
        performance=perf,
    )


class FakeRunner:
    """Stands in for flashinfer-bench's IsolatedRunner (which needs CUDA): `plan(solution, uuid)` gives
    each Evaluation (None: the runner raises for that workload, as when the reference fails)."""

    plan = staticmethod(lambda solution, uuid: evaluation(latency=1.0))
    calls: list = []

    def __init__(self, log_dir):
        self.log_dir = log_dir

    def run_workload(self, definition, workload, solutions, config, root):
        FakeRunner.calls.append(
            {"workload": workload.uuid, "solutions": [s.name for s in solutions], "config": config, "root": root}
        )
        out = {}
        for s in solutions:
            ev = FakeRunner.plan(s.name, workload.uuid)
            if ev is None:
                raise RuntimeError("reference failed")
            out[s.name] = ev
        return out

    def close(self):
        pass


def real_benchmark_factory(monkeypatch, plan=None):
    """flashinfer-bench's own Benchmark with its runner replaced by FakeRunner."""
    from flashinfer_bench.bench import benchmark as fib_benchmark

    FakeRunner.calls = []
    if plan is not None:
        monkeypatch.setattr(FakeRunner, "plan", staticmethod(plan))
    monkeypatch.setattr(fib_benchmark, "IsolatedRunner", FakeRunner)
    monkeypatch.setattr(fib_benchmark, "PersistentRunner", FakeRunner)
    return lambda trace_set, config: fib_benchmark.Benchmark(trace_set, config)


def timed_benchmark_factory(monkeypatch, latency: float | dict[str, float], ref: float = 20.0):
    """real_benchmark_factory where every run passes, taking `latency` ms (one number, or a dict: per solution
    name) against the reference's `ref` ms."""

    def plan(sol, uuid):
        return evaluation(latency=latency[sol] if isinstance(latency, dict) else latency, ref=ref)

    return real_benchmark_factory(monkeypatch, plan)


def small_dataset_copy(root: Path) -> Path:
    """The small definition's part of the bundled dataset, copied (so a test may change or check it)."""
    src = dataset.BUNDLED
    for rel in (
        f"definitions/moe/{SMALL_NAME}.json",
        f"workloads/moe/{SMALL_NAME}.jsonl",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, root / rel)
    shutil.copytree(src / "blob" / "workloads" / "moe" / SMALL_NAME, root / "blob" / "workloads" / "moe" / SMALL_NAME)
    return root


def snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def add_baseline_solution(root: Path, definition: str = SMALL_NAME) -> Path:
    """A stand-in for the contest's flashinfer_wrapper_9sdjf3.json at the place the dataset keeps it."""
    from flashinfer_bench import BuildSpec, Solution, SourceFile

    sol = Solution(
        name="flashinfer_wrapper_9sdjf3",
        definition=definition,
        author="flashinfer",
        spec=BuildSpec(language="python", target_hardware=["B200"], entry_point="main.py::run", dependencies=[]),
        sources=[SourceFile(path="main.py", content="def run(*args):\n    raise NotImplementedError\n")],
    )
    path = root / "solutions" / "baseline" / "moe" / definition / "flashinfer_wrapper_9sdjf3.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sol.model_dump_json())
    return path


def fake_tool(bin_dir: Path, name: str, body: str) -> Path:
    """An executable `name` in `bin_dir` running `body` (Python; `argv` and `os` are there)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\nimport os, sys\nargv = sys.argv[1:]\n{body}\n")
    path.chmod(0o755)
    return path


def only_on_path(monkeypatch, bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.path.dirname(sys.executable))
