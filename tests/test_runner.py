"""The one evaluation path (`fibmoe.runner`) through the CLI: the mean is the latency, a hang is a TIMEOUT
that does not stop the run, a failure names its file and line, strict JSON, progress on stderr, results out
of the repository (and written as each workload ends), flashinfer-bench Trace records, strongest evidence."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import ARGS, SMALL, write_variant
from typer.testing import CliRunner

from fibmoe import REPO_ROOT, results, runner
from fibmoe.cli import app

cli = CliRunner()
R1_FILE = REPO_ROOT / "examples" / "openevolve" / "initial_program.py"


def invoke(*args):
    return cli.invoke(app, [str(a) for a in args])


def strict_json(text: str):
    def refuse(const):
        raise ValueError(f"not strict JSON: {const}")

    return json.loads(text, parse_constant=refuse)


def correct_until(tmp_path, body_after: str, name="flaky"):
    """A DPS variant that is right (rung 1's example) except where `body_after` says otherwise."""
    body = (
        "import importlib.util, os, time, signal\n"
        f"spec = importlib.util.spec_from_file_location('ip', r'{R1_FILE}')\n"
        "ip = importlib.util.module_from_spec(spec); spec.loader.exec_module(ip)\n"
        f"def run({ARGS}, output):\n"
        f"{body_after}"
        "    ip.run(routing_logits, routing_bias, hs, hs_scale, w1, w1s, w2, w2s, offset, scale, output)\n"
    )
    return write_variant(tmp_path / name, body)


def test_latency_is_the_mean_of_the_spans_and_the_median_is_beside_it():
    facts = {"uuid": "u", "seq_len": 1, "floor_ms": 1.0}
    res = {"trials": [{"status": "PASSED", "spans_ms": [1.0, 1.0, 10.0]}, {"status": "PASSED", "spans_ms": [2.0] * 3}]}
    r = runner.record("v", 1, facts, res, runner.Settings(), reference_ms=12.0)
    assert r["latency_ms"] == pytest.approx(3.0)  # mean of the trial means (4 and 2), as the contest scores
    assert r["median_ms"] == 2.0 and r["trial_ms"] == [4.0, 2.0]
    assert r["speedup_vs_reference"] == pytest.approx(4.0) and r["fraction_of_floor"] == pytest.approx(1 / 3)


def test_the_gpu_side_is_the_mean_of_the_queued_spans_and_leaves_the_latency_alone():
    """`gpu_side_ms`: the same calls timed queued behind a busy GPU (`queued_spans`), beside the harness's
    latency, never instead of it; the raw spans stay out of the record's trials."""
    facts = {"uuid": "u", "seq_len": 1, "floor_ms": 1.0}
    res = {"trials": [{"status": "PASSED", "spans_ms": [4.0] * 2, "queued_ms": [3.0, 1.0]},
                      {"status": "PASSED", "spans_ms": [2.0] * 2, "queued_ms": [1.0, 1.0]}]}  # fmt: skip
    r = runner.record("v", 1, facts, res, runner.Settings())
    assert r["latency_ms"] == pytest.approx(3.0) and r["gpu_side_ms"] == pytest.approx(1.5)
    assert all("queued_ms" not in t and "spans_ms" not in t for t in r["trials"])
    cpu = runner.record("v", 1, facts, {"trials": [{"status": "PASSED", "spans_ms": [2.0]}]}, runner.Settings())
    assert cpu["gpu_side_ms"] is None  # no GPU, no queued spans
    failed = {"trials": [{"status": "INCORRECT_NUMERICAL", "spans_ms": [2.0], "queued_ms": [1.0]}]}
    assert runner.record("v", 1, facts, failed, runner.Settings())["gpu_side_ms"] is None


def test_the_bench_table_shows_the_gpu_side_and_says_what_it_is(capsys):
    from fibmoe.cli import _print_bench

    rec = {"variant": "v", "seq_len": 1, "uuid": "u" * 36, "status": "PASSED", "latency_ms": 0.0801,
           "median_ms": 0.0794, "gpu_side_ms": 0.0632, "reference_ms": 2.4, "speedup_vs_reference": 30.0,
           "speedup_vs_previous": None, "floor_ms": 0.0307, "fraction_of_floor": 0.38}  # fmt: skip
    pay = {"definition": "d", "provenance": {"timer": "t", "device_name": "H200"}, "records": [rec],
           "summary": {}, "launch": {}}  # fmt: skip
    _print_bench(pay, "cuda")
    text = capsys.readouterr().out
    assert "0.0632" in text and "queued behind a busy GPU" in text
    _print_bench({**pay, "records": [{**rec, "gpu_side_ms": None}]}, "cuda")
    assert "queued behind a busy GPU" not in capsys.readouterr().out  # nothing measured, nothing said
    launch = {"empty_triton_kernel": {"mean_ms": 0.044}, "empty_python_call": {"mean_ms": 0.0134}}
    _print_bench({**pay, "launch": launch}, "cuda")  # a payload from before the GPU-side probe
    assert "empty Triton kernel launch 44.0 us, an empty Python call 13.4 us" in capsys.readouterr().out
    _print_bench({**pay, "launch": {**launch, "empty_triton_kernel_gpu_side": {"mean_ms": 0.009}}}, "cuda")
    assert "launch 44.0 us (9.0 us of it on the GPU's side)" in capsys.readouterr().out


def test_a_hang_is_a_timeout_and_the_run_goes_on(tmp_path):
    folder = correct_until(tmp_path, "    if hs.shape[0] == 1:\n        time.sleep(600)\n", "sleepy")
    r = invoke("check", folder, *SMALL, "--trials", "1", "-t", "1", "-t", "3", "--timeout", "8", "--json")
    rows = strict_json(r.stdout)
    assert r.exit_code == 1, r.output
    assert [(x["seq_len"], x["status"]) for x in rows] == [(1, "TIMEOUT"), (3, "PASSED")]
    assert "8 s" in rows[0]["message"]


def test_a_runtime_failure_names_the_kernels_file_and_line(tmp_path):
    body = f"import torch\n\n\ndef run({ARGS}, output):\n    output.zero_()\n    raise IndexError('bad stride')\n"
    folder = write_variant(tmp_path / "broken", body)
    r = invoke("check", folder, *SMALL, "--trials", "1", "-t", "1", "--json")
    row = strict_json(r.stdout)[0]
    assert row["status"] == "RUNTIME_ERROR" and "IndexError: bad stride" in row["message"]
    assert "main.py:6 in run" in row["message"]
    r = invoke("eval", folder / "main.py", *SMALL, "--quick", "-t", "1", "--json")
    res = strict_json(r.stdout)
    assert res["combined_score"] == 0.0 and "main.py:6 in run" in res["error"]


def test_json_is_strict_and_progress_goes_to_stderr(tmp_path):
    folder = write_variant(tmp_path / "lazy", f"def run({ARGS}, output):\n    output[:-1] = 0\n")
    r = invoke("check", folder, *SMALL, "--trials", "1", "-t", "40", "--json")
    row = strict_json(r.stdout)[0]  # NaN would not parse
    assert row["status"] == "INCORRECT_NUMERICAL" and row["rel_l2_error"] is None
    assert "rel_l2_error is null (it was nan)" in row["message"]
    assert "lazy T=40" in r.stderr  # progress, even with --json


def test_plain_bench_on_a_cpu_is_short_says_so_and_writes_outside_the_repo(tmp_path, monkeypatch):
    from flashinfer_bench.data import Trace
    from flashinfer_bench.data.json_utils import load_jsonl_file

    data = tmp_path / "data"
    monkeypatch.setenv("FIBMOE_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    r = invoke("bench", "r1-torch", *SMALL, "-t", "1", "--json")
    assert r.exit_code == 0, r.output
    assert "on a CPU: 1 warm-up, 3 timed calls, 1 trial" in r.stderr and "per-user data folder" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing in the current folder
    files = list((data / "results" / "cpu").glob("bench-*.json"))
    assert len(files) == 1 and str(files[0]) in r.stderr.replace("\n", "")
    payload = strict_json(files[0].read_text())
    assert payload["complete"] and payload["provenance"]["settings"]["iterations"] == 3
    assert payload["provenance"]["flashinfer_bench"] == "0.1.2"  # the installed one, not 0.0.0.dev0
    rec = payload["records"][0]
    assert rec["latency_ms"] > 0 and rec["median_ms"] > 0 and len(rec["trial_ms"]) == 1
    traces = load_jsonl_file(Trace, files[0].with_name(files[0].stem + ".traces.jsonl"))
    assert [t.solution for t in traces] == ["r1-torch"] and traces[0].evaluation.status.value == "PASSED"
    assert traces[0].evaluation.performance.latency_ms == pytest.approx(rec["latency_ms"])
    assert traces[0].workload.uuid == rec["uuid"]


def test_plain_bench_on_a_cpu_times_interpreter_rungs_on_the_smallest_workloads_only(monkeypatch):
    from fibmoe import cli as cli_mod
    from fibmoe import dataset, variants

    ds = dataset.load(dataset.SMALL.name)
    chosen = variants.resolve(["r1-torch", "r3-triton-fp8"])
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    picked = cli_mod._cpu_bench_selection(chosen, ds, ds.workloads, "cpu")
    assert sorted(w.workload.axes["seq_len"] for w in picked) == [1, 3]
    assert cli_mod._cpu_bench_selection(chosen[:1], ds, ds.workloads, "cpu") == ds.workloads


def test_results_are_written_as_each_workload_ends(tmp_path):
    # The candidate kills the whole run (the CLI's process) on the second workload: the first stays on disk.
    pid_file = tmp_path / "cli.pid"
    kill = f"    if hs.shape[0] == 3:\n        os.kill(int(open(r'{pid_file}').read()), signal.SIGKILL)\n"
    folder = correct_until(tmp_path, kill)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "FIBMOE_DATA_DIR": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "fibmoe", "check", str(folder), *SMALL, "--trials", "1", "-t", "1", "-t", "3"]
    proc = subprocess.Popen([*cmd, "--results-dir", str(tmp_path / "res")], env=env, stderr=subprocess.PIPE)
    pid_file.write_text(str(proc.pid))
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == -9, stderr
    (path,) = (tmp_path / "res" / "cpu").glob("check-*.json")
    data = strict_json(path.read_text())
    assert data["complete"] is False and [(r["seq_len"], r["status"]) for r in data["records"]] == [(1, "PASSED")]


def test_variants_shows_the_strongest_evidence_and_its_file(tmp_path, monkeypatch):
    def run_file(gpu, name, date, statuses):
        path = tmp_path / gpu / name
        path.parent.mkdir(parents=True, exist_ok=True)
        recs = [{"variant": "r1-torch", "uuid": f"u{i}", "status": s} for i, s in enumerate(statuses)]
        path.write_text(json.dumps({"kind": "bench", "provenance": {"date": date}, "records": recs}))
        return path

    run_file("cpu", "bench-new.json", "2026-12-01T00:00:00+00:00", ["PASSED"])
    gpu = run_file("h200", "bench-full.json", "2026-11-20T00:00:00+00:00", ["PASSED"] * 19)
    run_file("h200", "bench-partial.json", "2026-11-25T00:00:00+00:00", ["PASSED"] * 3)
    monkeypatch.setattr(results, "EVIDENCE_DIR", tmp_path)
    monkeypatch.setenv("FIBMOE_DATA_DIR", str(tmp_path / "nothing"))
    r = invoke("variants", "--json")
    row = next(x for x in strict_json(r.stdout) if x["name"] == "r1-torch")
    assert row["last_status"] == "PASSED 19/19 (bench, h200, 2026-11-20)" and row["evidence_file"] == str(gpu)
    assert Path(row["evidence_file"]).is_file()


class _FakeWorker:
    """Stands in for a child process: counts the children started, answers every job as PASSED."""

    started: list = []

    def __init__(self):
        self.alive = False

    def run(self, job, timeout_s):
        if not self.alive:
            self.alive = True
            _FakeWorker.started.append(job.kind)
        return {"trials": [{"status": "PASSED", "spans_ms": [1.0, 1.0]}]}

    def close(self):
        self.alive = False


@pytest.mark.parametrize("device, children", [("cuda:0", 3), ("cpu", 1)])
def test_timed_on_a_gpu_every_workload_gets_a_fresh_child(monkeypatch, device, children):
    """As the contest's isolated runner: on a GPU a solution's timed workloads each run in a new process
    (a long-lived one slowed T = 1 by 35% once); the reference's child, and a CPU run's, live on."""
    from fibmoe import dataset, variants
    from fibmoe.geometry import SMALL as SMALL_GEOMETRY

    monkeypatch.setattr(runner, "Worker", _FakeWorker)
    monkeypatch.setattr(_FakeWorker, "started", [])
    ds = dataset.load(SMALL_GEOMETRY.name)
    records = runner.run(variants.resolve(["r1-torch"]), ds, ds.workloads[:3], device, runner.Settings(), timed=True)
    assert [r["status"] for r in records] == ["PASSED"] * 3
    assert _FakeWorker.started.count("solution") == children and _FakeWorker.started.count("reference") == 1
