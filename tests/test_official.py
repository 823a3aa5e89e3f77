"""The official path on a CPU: settings mapping, the in-memory trace set, flashinfer-bench's real
`Benchmark.run_all` over a fake runner, conversion of its Trace/Evaluation objects, and the score."""

import dataclasses
import json

import pytest
import torch
from fib_fakes import (
    SMALL_NAME,
    FakeRunner,
    add_baseline_solution,
    evaluation,
    real_benchmark_factory,
    small_dataset_copy,
    snapshot,
    timed_benchmark_factory,
)
from typer.testing import CliRunner

from fibmoe import dataset, judge, official, variants
from fibmoe.cli import _print_bench, _print_official, app
from fibmoe.errors import FibmoeError
from fibmoe.geometry import CONTEST
from fibmoe.roofline import GPU_TABLE

H100 = GPU_TABLE[0]


@pytest.fixture
def ds(tmp_path):
    return dataset.load(SMALL_NAME, small_dataset_copy(tmp_path / "ds"))


@pytest.fixture
def r1():
    return variants.pack(variants.resolve(["r1-torch"])[0], SMALL_NAME)


def test_official_settings_map_onto_benchmark_config():
    cfg = official.benchmark_config(official.OfficialSettings(), SMALL_NAME, ["a", "b"])
    assert (cfg.warmup_runs, cfg.iterations, cfg.num_trials) == (10, 50, 3)
    assert (cfg.atol, cfg.rtol, cfg.required_matched_ratio) == (judge.ATOL, judge.RTOL, judge.MATCHED_RATIO)
    assert (cfg.atol, cfg.rtol, cfg.required_matched_ratio) == (1.0, 0.3, 0.9)
    assert all(isinstance(x, float) for x in (cfg.atol, cfg.rtol, cfg.required_matched_ratio))
    assert cfg.use_isolated_runner and cfg.timeout_seconds == 300
    assert cfg.definitions == [SMALL_NAME] and cfg.solutions == ["a", "b"]
    assert official.OfficialSettings().is_official()
    # integers would be refused by BenchmarkConfig: the mapping makes them floats
    cfg = official.benchmark_config(official.OfficialSettings(atol=1, rtol=1, matched_ratio=1), SMALL_NAME, [])
    assert isinstance(cfg.atol, float) and isinstance(cfg.required_matched_ratio, float)
    with pytest.raises(FibmoeError, match="invalid benchmark settings"):
        official.benchmark_config(official.OfficialSettings(iterations=0), SMALL_NAME, [])


def test_matched_ratio_is_passed_explicitly_because_the_moe_evaluator_defaults_to_095():
    from flashinfer_bench.bench.utils import compute_error_stats

    cfg = official.benchmark_config(official.OfficialSettings(), SMALL_NAME, [])
    ref = torch.zeros(100)
    out = ref.clone()
    out[:8] = 10.0  # 92% of elements within tolerance
    assert not compute_error_stats(out, ref, cfg)[2]
    assert compute_error_stats(out, ref, dataclasses.replace(cfg, required_matched_ratio=0.95))[2]


def test_trace_set_is_in_memory_and_rooted_at_the_dataset(ds, r1):
    ts = official.build_trace_set(ds, ds.workloads[:2], [r1])
    assert ts.root == ds.root
    assert list(ts.definitions) == [SMALL_NAME]
    assert [s.name for s in ts.solutions[SMALL_NAME]] == ["r1-torch"]
    assert [w.workload.uuid for w in ts.workloads[SMALL_NAME]] == [w.workload.uuid for w in ds.workloads[:2]]
    assert ts.traces == {}
    with pytest.raises(FibmoeError, match="cannot build the trace set"):
        official.build_trace_set(ds, ds.workloads, [r1, r1])
    other = variants.pack(variants.resolve(["r1-torch"])[0], CONTEST.name)
    with pytest.raises(FibmoeError, match="is for definition"):
        official.build_trace_set(ds, ds.workloads, [other])


def test_real_benchmark_runs_all_workloads_and_writes_nothing_into_the_dataset(monkeypatch, ds, r1):
    before = snapshot(ds.root)
    factory = timed_benchmark_factory(monkeypatch, 2.0, ref=10.0)
    records, info = official.run_official(
        ds, ds.workloads, [r1], hw=H100, rungs={"r1-torch": 1}, benchmark_factory=factory, capability=(9, 0)
    )
    assert snapshot(ds.root) == before  # no traces/ folder, no appended jsonl
    assert [c["workload"] for c in FakeRunner.calls] == [w.workload.uuid for w in ds.workloads]
    cfg = FakeRunner.calls[0]["config"]
    assert cfg.required_matched_ratio == 0.9 and cfg.atol == 1.0 and cfg.rtol == 0.3 and cfg.use_isolated_runner
    assert FakeRunner.calls[0]["root"] == ds.root
    assert len(records) == len(ds.workloads)
    rec = records[0]
    assert rec["variant"] == "r1-torch" and rec["rung"] == 1 and len(rec["uuid"]) == 36
    assert rec["status"] == "PASSED" and rec["latency_ms"] == 2.0 and rec["reference_ms"] == 10.0
    assert rec["speedup_vs_reference"] == pytest.approx(5.0)
    assert rec["matched_ratio"] == 0.999 and rec["floor_ms"] > 0 and rec["fraction_of_floor"] > 0
    assert not info["ran"] and "has no flashinfer_wrapper_9sdjf3" in info["reason"]


def test_conversion_of_every_status_and_of_a_missing_result(monkeypatch, ds, r1):
    tb = 'Traceback (most recent call last):\n  File "main.py", line 3, in run\nValueError: boom'
    plans = {
        0: evaluation(latency=1.5),
        1: evaluation("INCORRECT_NUMERICAL", matched=0.5, abs_err=40.0),
        2: evaluation("RUNTIME_ERROR", log=tb),
        3: evaluation("COMPILE_ERROR", log="Build error: SyntaxError: invalid syntax (main.py, line 1)"),
        4: evaluation("TIMEOUT", log="Evaluation timeout after 300 seconds for solution r1-torch"),
        5: None,  # the runner raised: Benchmark logs and skips the workload
    }
    index = {w.workload.uuid: i for i, w in enumerate(ds.workloads)}
    factory = real_benchmark_factory(monkeypatch, lambda sol, uuid: plans[index[uuid]])
    records, _ = official.run_official(ds, ds.workloads, [r1], benchmark_factory=factory, baseline=False)
    by = {index[r["uuid"]]: r for r in records}
    assert [by[i]["status"] for i in range(6)] == [
        "PASSED",
        "INCORRECT_NUMERICAL",
        "RUNTIME_ERROR",
        "COMPILE_ERROR",
        "TIMEOUT",
        "RUNTIME_ERROR",
    ]
    assert by[0]["error"] is None and by[0]["message"] == ""
    assert "matched ratio 0.5000 < 0.9" in by[1]["message"] and by[1]["latency_ms"] is None
    assert by[2]["message"] == "ValueError: boom" and "Traceback" in by[2]["error"]
    assert "SyntaxError" in by[3]["message"]
    assert "timeout" in by[4]["message"]
    assert by[5]["message"] == official.NO_RESULT
    assert all(r["floor_ms"] is None for r in records)  # no hardware given
    assert official.any_failed(records)
    json.dumps(records)  # plain JSON


def _rec(name, uuid, status="PASSED", latency=1.0, baseline=False, ref=10.0):
    return {
        "variant": name,
        "uuid": uuid,
        "seq_len": 1,
        "status": status,
        "baseline": baseline,
        "rung": None,
        "latency_ms": latency if status == "PASSED" else None,
        "reference_ms": ref,
        "speedup_vs_reference": ref / latency if status == "PASSED" else None,
        "fraction_of_floor": None,
    }


def test_score_is_mean_of_baseline_over_ours_and_zero_if_any_workload_failed():
    recs = [
        _rec("ours", "u1", latency=1.0),
        _rec("ours", "u2", latency=2.0),
        _rec(official.BASELINE_NAME, "u1", latency=2.0, baseline=True),
        _rec(official.BASELINE_NAME, "u2", latency=3.0, baseline=True),
    ]
    official.add_baseline_speedups(recs)
    assert [r.get("speedup_vs_baseline") for r in recs[:2]] == [2.0, 1.5]
    s = official.official_score(recs, total_workloads=2)
    assert list(s) == ["ours"]  # the baseline is not scored
    assert s["ours"]["score_vs_baseline"] == pytest.approx(1.75) and s["ours"]["score_note"] == ""
    assert s["ours"]["mean_speedup_vs_reference"] == pytest.approx((10.0 + 5.0) / 2)

    recs[1] = _rec("ours", "u2", status="RUNTIME_ERROR")
    official.add_baseline_speedups(recs)
    s = official.official_score(recs, total_workloads=19)["ours"]
    assert s["score_vs_baseline"] == 0.0 and s["mean_speedup_vs_reference"] == 0.0
    assert "zeroed: 1 of 2" in s["score_note"] and "over 2 of 19 workloads" in s["score_note"]


def test_score_is_unavailable_without_a_passing_baseline():
    recs = [_rec("ours", "u1"), _rec(official.BASELINE_NAME, "u1", status="RUNTIME_ERROR", baseline=True)]
    official.add_baseline_speedups(recs)
    s = official.official_score(recs)["ours"]
    assert s["score_vs_baseline"] is None and "did not pass" in s["score_note"]
    recs = [_rec("ours", "u1")]
    official.add_baseline_speedups(recs, "the FlashInfer baseline runs on Blackwell (sm_100) only")
    s = official.official_score(recs)["ours"]
    assert s["score_vs_baseline"] is None and "Blackwell" in s["score_note"]
    assert s["mean_speedup_vs_reference"] == 10.0  # the reference speedup is still reported


def test_baseline_runs_beside_ours_on_blackwell_only(monkeypatch, ds, r1):
    assert official.find_baseline(ds)[0] is None
    add_baseline_solution(ds.root)
    sol, why = official.find_baseline(ds)
    assert sol.name == official.BASELINE_NAME and why == ""
    assert official.choose_baseline(ds, False, (10, 0))[0] is None
    assert "sm_90" in official.choose_baseline(ds, None, (9, 0))[1]

    lat = {"r1-torch": 2.0, official.BASELINE_NAME: 1.0}
    factory = timed_benchmark_factory(monkeypatch, lat)
    records, info = official.run_official(ds, ds.workloads[:3], [r1], benchmark_factory=factory, capability=(10, 0))
    assert info["ran"] and FakeRunner.calls[0]["solutions"] == ["r1-torch", official.BASELINE_NAME]
    ours = [r for r in records if not r["baseline"]]
    assert len(ours) == 3 and all(r["speedup_vs_baseline"] == 0.5 for r in ours)
    pay = official.payload(ds, records, info, official.OfficialSettings(), None, {"timer": "t", "device_name": "x"})
    assert pay["summary"]["r1-torch"]["score_vs_baseline"] == pytest.approx(0.5)
    assert "over 3 of 6 workloads" in pay["summary"]["r1-torch"]["score_note"]
    assert pay["official"]["settings"]["matched_ratio"] == 0.9 and pay["official"]["official_settings"]


def test_run_payload_prints_in_the_bench_table(monkeypatch, ds, r1, capsys):
    factory = timed_benchmark_factory(monkeypatch, 2.0)
    msgs = []
    pay = official.run(
        ds, ds.workloads[:2], [r1], "cpu", benchmark_factory=factory, baseline=False, progress=msgs.append
    )
    assert any("Solution 'r1-torch' for workload" in m and "PASSED" in m for m in msgs)
    assert pay["provenance"]["mode"] == "official" and "flashinfer-bench Benchmark" in pay["provenance"]["timer"]
    assert pay["provenance"]["settings"]["iterations"] == 50
    _print_bench(pay, "cuda")
    _print_official(pay)
    text = capsys.readouterr().out
    assert "r1-torch" in text and "official score vs FlashInfer baseline unavailable" in text


def test_default_factory_refuses_without_cuda_in_one_line(ds, r1):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(FibmoeError, match="needs a CUDA GPU"):
        official.run_official(ds, ds.workloads[:1], [r1], baseline=False)
    r = CliRunner().invoke(app, ["bench", "--official", "r1-torch", "--definition", "small"])
    assert r.exit_code == 2 and "needs a CUDA GPU" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["bench", "r1-torch", "--parallel"])
    assert r.exit_code == 2 and "--parallel" in r.output
