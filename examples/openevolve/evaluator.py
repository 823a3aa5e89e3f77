"""OpenEvolve evaluator for fibmoe: each candidate program goes through `fibmoe eval --json`.

OpenEvolve writes each candidate to a temporary `.py` file and calls `evaluate_stage1` (quick: 5
workloads, 1 trial) then, if its combined_score clears the cascade threshold, `evaluate_stage2` (all
workloads, the official 10/50/3 timing). `fibmoe eval` runs in a subprocess, so a candidate that crashes
the process (a segfault, a poisoned CUDA context) costs one evaluation, not the search.

    openevolve-run.py examples/openevolve/initial_program.py examples/openevolve/evaluator.py \
        --config examples/openevolve/config.yaml

Environment:
    FIBMOE_EVAL_ARGS     more arguments for `fibmoe eval`, e.g. "--definition small --device cpu" for a
                         CPU smoke run, "--official" to time with flashinfer-bench's Benchmark
    FIBMOE_PYTHON        the interpreter that has fibmoe installed (default: the one running this file)
    FIBMOE_EVAL_TIMEOUT  seconds per evaluation (default 1800)
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_fibmoe_eval(program_path, *flags):
    """The JSON object `fibmoe eval` prints, or one with combined_score 0 and the error when it printed none."""
    python = os.environ.get("FIBMOE_PYTHON", sys.executable)
    cmd = [python, "-m", "fibmoe", "eval", str(program_path), "--json"]
    cmd += list(flags) + shlex.split(os.environ.get("FIBMOE_EVAL_ARGS", ""))
    timeout = int(os.environ.get("FIBMOE_EVAL_TIMEOUT", "1800"))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"combined_score": 0.0, "passed": 0, "workloads": 0, "error": f"fibmoe eval timed out after {timeout} s"}
    try:
        return json.loads(proc.stdout)  # exit 0 (all passed) and 1 (the candidate failed) both print JSON
    except ValueError:
        why = (proc.stderr or proc.stdout).strip()[-4000:] or f"fibmoe eval exited with {proc.returncode}"
        if "No module named fibmoe" in why:  # a set-up problem: every candidate would score 0 for it
            why = (
                f"fibmoe is not importable from {python}: set FIBMOE_PYTHON to the interpreter that has it "
                f"(after `make setup`: {REPO / '.venv' / 'bin' / 'python'})"
            )
            print(f"fibmoe evaluator: {why}", file=sys.stderr)
        return {"combined_score": 0.0, "passed": 0, "workloads": 0, "error": why}


def to_openevolve(res):
    """Metrics (floats, combined_score first) and artifacts (the error, per-workload lines) for OpenEvolve."""
    metrics = {"combined_score": float(res.get("combined_score") or 0.0)}
    if res.get("workloads"):
        metrics["pass_rate"] = res["passed"] / res["workloads"]
    for key in ("mean_speedup_vs_reference", "mean_fraction_of_floor", "max_rel_l2_error"):
        if res.get(key) is not None:
            metrics[key] = float(res[key])
    artifacts = {}
    if res.get("error"):
        artifacts["error"] = res["error"]
    if res.get("per_workload"):
        artifacts["per_workload"] = "\n".join(
            f"T={r['seq_len']} {r['status']} latency_ms={r['latency_ms']} x_ref={r['speedup_vs_reference']} "
            f"rel_l2={r['rel_l2_error']} {r['message']}".rstrip()
            for r in res["per_workload"]
        )
    if res.get("ncu") and res["ncu"].get("reading"):
        artifacts["ncu"] = res["ncu"]["reading"]
    try:
        from openevolve.evaluation_result import EvaluationResult
    except ImportError:  # without OpenEvolve (or an old one): plain metrics, which it also accepts
        return metrics
    return EvaluationResult(metrics=metrics, artifacts=artifacts)


def evaluate_stage1(program_path):
    return to_openevolve(run_fibmoe_eval(program_path, "--quick"))


def evaluate_stage2(program_path):
    return to_openevolve(run_fibmoe_eval(program_path))


def evaluate(program_path):
    return evaluate_stage2(program_path)
