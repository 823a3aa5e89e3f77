"""Evaluating candidates so that a bad one cannot break the search.

Every evaluation is the evaluator's command-line contract, `python -m fibmoe eval FOLDER --json [--quick]`
(docs/eval.md), in a subprocess that leads its own process group (session) under a hard wall-clock limit:
at the limit the whole group is killed, so a `time.sleep`, a hung CUDA context or a segfault costs one
evaluation. A slot (one per GPU, CUDA_VISIBLE_DEVICES; or `workers` on the CPU) bounds parallelism; slots
are lock files, so evaluations started by several processes (OpenEvolve's workers) share them too.
With the Modal backend the subprocess is `python -m fibmoe.loops.modal_eval`, same JSON.

Promotion: the quick run only filters; a candidate is verified when the full run passes `repeats` times
in a row with the same verdict, and its score is the lowest of those runs; it replaces the best only if
that score is higher by more than `min_gain` (timing noise alone must not promote a kernel).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import variants
from ..processes import die_with_parent

REPO_ROOT = variants.REPO_ROOT
ERROR_CHARS = 4000

# A candidate's status after evaluation, as the lineage records it.
VERIFIED = "verified"  # full evaluation passed every repeat (promoted if it beats the best)
FAILED_QUICK = "failed-quick"  # the quick filter failed (build, check or bench)
FAILED = "failed"  # the full evaluation failed, every repeat
FLAKY = "flaky"  # the repeats disagree: not promoted
TIMEOUT = "timeout"  # killed at the limit
REJECTED = "rejected"  # a static check refused it; it never ran
BAD_REPLY = "bad-reply"  # the reply could not be turned into a candidate
LLM_ERROR = "llm-error"  # the model could not be reached


@dataclass
class EvalOptions:
    """How candidates are evaluated; the loops' options, saved in the run's config."""

    definition: str = "auto"
    device: str = "auto"
    workloads: list[str] = field(default_factory=list)  # uuid prefixes: restrict the evaluation
    seq_lens: list[int] = field(default_factory=list)
    timeout_s: float = 900.0  # per evaluation, JIT and autotuning included
    repeats: int = 3
    min_gain: float = 0.01  # a verified candidate replaces the best only if its score is this much higher
    gpus: list[str] = field(default_factory=list)  # CUDA_VISIBLE_DEVICES value per slot; [] = no GPU pinning
    workers: int = 1  # slots when gpus is empty
    backend: str = "local"  # local | modal
    modal_gpu: str = "B200"
    ncu: bool = False
    python: str = ""  # the interpreter for the evaluator; default: the one running the loop
    eval_command: list[str] = field(default_factory=list)  # instead of `python -m fibmoe eval` (tests)

    @classmethod
    def from_dict(cls, d: dict) -> EvalOptions:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)

    def beats(self, score: float, best: float | None) -> bool:
        """Whether a verified candidate's score replaces the best (None: there is none yet)."""
        return best is None or score > best * (1 + self.min_gain)

    def slots(self) -> list[str | None]:
        return list(self.gpus) if self.gpus else [None] * max(1, self.workers)

    def command(self, folder: Path, quick: bool, ncu: bool = False) -> list[str]:
        if self.backend == "modal":
            cmd = [self.python or sys.executable, "-m", "fibmoe.loops.modal_eval", str(folder), "--gpu", self.modal_gpu]
            cmd += ["--definition", "contest" if self.definition == "auto" else self.definition]
        else:
            cmd = [
                *(self.eval_command or [self.python or sys.executable, "-m", "fibmoe", "eval"]),
                str(folder),
                "--json",
            ]
            cmd += ["--definition", self.definition, "--device", self.device]
            if ncu:
                cmd.append("--ncu")
        for w in self.workloads:
            cmd += ["--workload", w]
        for t in self.seq_lens:
            cmd += ["--seq-len", str(t)]
        if quick:
            cmd.append("--quick")
        return cmd


def failure(error: str, stage: str) -> dict:
    """An eval-shaped result for an evaluation that printed none."""
    return {"combined_score": 0.0, "passed": 0, "workloads": 0, "all_passed": False, "stage": stage, "error": error}


@contextmanager
def slot(lock_dir: Path, slots: list[str | None]):
    """Hold one free slot (its CUDA_VISIBLE_DEVICES value) for the duration; waits while all are busy."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for i, value in enumerate(slots):
            fh = open(lock_dir / f"slot-{i}.lock", "w")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            try:
                yield value
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            return
        time.sleep(0.1)


def run_eval(cmd: list[str], timeout_s: float, gpu: str | None = None) -> dict:
    """One evaluation subprocess, its own process group, killed whole at `timeout_s`. Never raises
    for the candidate's failures; the result carries `wall_s`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    with _LOCK:
        _LIVE.add(proc)
        stopped = _STOP.is_set()  # a Ctrl-C that came between the Popen and here missed this process
    try:
        if stopped:
            raise Interrupted("the evaluation was stopped")
        stdout, stderr = proc.communicate(timeout=timeout_s)
        if _STOP.is_set():  # killed by kill_running (Ctrl-C in another thread): not a verdict on the candidate
            raise Interrupted("the evaluation was stopped")
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        _drain(proc)
        res = failure(f"killed at the time limit: the evaluation ran past {timeout_s:g} s", "timeout")
        return {**res, "timed_out": True, "wall_s": round(time.monotonic() - start, 2)}
    except BaseException:  # Ctrl-C or any other exit: never leave the candidate running
        _kill_group(proc)
        raise
    finally:
        with _LOCK:
            _LIVE.discard(proc)
    wall = round(time.monotonic() - start, 2)
    res = parse_eval_output(stdout, stderr, proc.returncode)
    return {**res, "wall_s": wall, "exit_status": proc.returncode}


# Evaluations running now, in any thread: Ctrl-C kills them all (a worker thread never sees the interrupt).
_LIVE: set[subprocess.Popen] = set()
_LOCK = threading.Lock()
_STOP = threading.Event()


class Interrupted(Exception):
    """An evaluation stopped by an interruption: nothing is recorded for it, a resumed run redoes it."""


def kill_running() -> None:
    """Kill every evaluation running now, and any that registers after this (run_eval checks _STOP under
    the same lock): a thread can be between its Popen and its registration when Ctrl-C comes."""
    _STOP.set()
    with _LOCK:
        live = list(_LIVE)
    for proc in live:
        _kill_group(proc)


def _drain(proc: subprocess.Popen) -> None:
    """Read what a killed evaluation left in its pipes, without waiting for a straggler that escaped its
    process group and still holds them open."""
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own group: its children die with it
    except ProcessLookupError:
        pass
    proc.wait()


def parse_eval_output(stdout: str, stderr: str, returncode: int) -> dict:
    """The JSON object `fibmoe eval --json` printed (exit 0 and 1 both print one), else a failure."""
    text = stdout.strip()
    start = text.find("{")
    if start >= 0:
        try:
            res = json.loads(text[start:])
            if isinstance(res, dict) and "combined_score" in res:
                return res
        except ValueError:
            pass
    why = (stderr or stdout).strip()[-ERROR_CHARS:] or f"the evaluator exited with status {returncode}"
    if returncode < 0:
        why = f"the evaluator died of signal {-returncode}: {why}"
    return failure(why, "crash" if returncode != 2 else "input")


# ---- one candidate, start to verdict ------------------------------------------------------------


class Evaluator:
    """Quick filter, then the full evaluation repeated; each result kept as JSON in the candidate's folder,
    so a resumed run reads what was done instead of running it again."""

    def __init__(self, options: EvalOptions, lock_dir: Path):
        self.options = options
        self.lock_dir = lock_dir

    def evaluate(self, folder: Path, label: str, quick: bool, ncu: bool = False) -> dict:
        path = folder / f"eval-{label}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass  # a half-written file from an interruption: run it again
        cmd = self.options.command(folder, quick, ncu)
        with slot(self.lock_dir, self.options.slots()) as gpu:
            res = run_eval(cmd, self.options.timeout_s, gpu)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2))
        tmp.replace(path)
        return res

    def verdict(self, folder: Path, quick_first: bool = True, on_stage=None) -> dict:
        """{'status', 'score', 'error', 'eval': the result to show, 'scores': per full run, 'eval_s'}."""
        spent = []
        _STOP.clear()
        if quick_first:
            if on_stage:
                on_stage("quick")
            q = self.evaluate(folder, "quick", quick=True)
            spent.append(q)
            if not q.get("all_passed"):
                return _verdict(TIMEOUT if q.get("timed_out") else FAILED_QUICK, None, q, [], spent)
        if on_stage:
            on_stage("full")
        n = max(1, self.options.repeats)

        def full(i: int) -> dict:
            return self.evaluate(folder, f"full-{i + 1}", quick=False, ncu=self.options.ncu and i == 0)

        workers = min(n, len(self.options.slots()))
        if workers == 1:
            runs = [full(i) for i in range(n)]
        else:  # the repeats side by side, one per slot
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                runs = list(pool.map(full, range(n)))
            except BaseException:  # Ctrl-C reaches this thread only: stop the others' evaluations too
                kill_running()
                raise
            finally:
                pool.shutdown(wait=True)
        spent += runs
        passed = [bool(r.get("all_passed")) for r in runs]
        first_bad = next((r for r in runs if not r.get("all_passed")), runs[-1])
        if all(passed):
            return _verdict(VERIFIED, min(float(r["combined_score"]) for r in runs), runs[0], runs, spent)
        if any(r.get("timed_out") for r in runs):
            return _verdict(TIMEOUT, None, first_bad, runs, spent)
        if any(passed):
            why = f"the {n} full runs disagree ({sum(passed)} passed): not trusted\n{first_bad.get('error')}"
            return {**_verdict(FLAKY, None, first_bad, runs, spent), "error": why}
        return _verdict(FAILED, None, first_bad, runs, spent)


def _verdict(status: str, score, shown: dict, runs: list[dict], spent: list[dict]) -> dict:
    return {
        "status": status,
        "score": score,
        "error": shown.get("error"),
        "eval": shown,
        "scores": [r.get("combined_score") for r in runs],
        "eval_s": round(sum(r.get("wall_s", 0.0) for r in spent), 2),
    }


def parse_gpus(text: str | None, device: str) -> list[str]:
    """--gpus: '0,1,3' (those GPUs, one worker each), 'N' (the first N), or none: every visible GPU when
    evaluating on CUDA, none on the CPU."""
    from ..errors import FibmoeError

    if text:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or not all(p.isdigit() for p in parts):
            raise FibmoeError(f"--gpus {text!r}: give GPU indices (0,1,3) or a count (4)")
        if len(parts) == 1 and "," not in text:
            if int(parts[0]) < 1:
                raise FibmoeError("--gpus N needs N >= 1 (or a list of indices such as 0,)")
            return [str(i) for i in range(int(parts[0]))]
        return parts
    if device == "cpu":
        return []
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
