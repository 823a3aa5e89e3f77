"""`fibmoe eval`: the JSON an evolutionary search reads, for good candidates and for each way a candidate
fails (build, runtime, numerics), kernel files packed alone, the quick subset, and the OpenEvolve example."""

import importlib.util
import json

import pytest
from fib_fakes import SMALL_NAME, timed_benchmark_factory
from typer.testing import CliRunner

from fibmoe import dataset, evaluate, variants
from fibmoe.cli import app
from fibmoe.errors import FibmoeError
from fibmoe.geometry import CONTEST

runner = CliRunner()
CPU = ["--definition", "small", "--device", "cpu", "--json"]
EXAMPLES = variants.REPO_ROOT / "examples" / "openevolve"
ARGS = "routing_logits, routing_bias, hs, hs_scale, w1, w1s, w2, w2s, offset, scale, output"
KEYS = set(
    "combined_score passed workloads all_passed stage error candidate language per_workload mean_speedup_vs_reference"
    " mean_fraction_of_floor max_rel_l2_error mode device definition".split()
)
ROW_KEYS = set(
    "uuid seq_len status latency_ms reference_ms speedup_vs_reference max_abs_error rel_l2_error matched_ratio"
    " routing_agreement message".split()
)


def eval_json(*args):
    r = runner.invoke(app, ["eval", *map(str, args)])
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, json.loads(r.stdout)


def kernel(tmp_path, body, name="cand.py"):
    path = tmp_path / name
    path.write_text(body)
    return path


def test_a_passing_variant_scores_its_mean_speedup():
    code, res = eval_json("r1-torch", *CPU, "--quick", "--seq-len", "1", "--seq-len", "7")
    assert code == 0 and KEYS <= res.keys()
    assert res["all_passed"] and res["stage"] == "done" and res["error"] is None
    assert (res["passed"], res["workloads"]) == (2, 2) and res["mode"] == "quick"
    assert res["settings"] == {"warmup": 3, "iterations": 10, "trials": 1}
    rows = res["per_workload"]
    assert all(ROW_KEYS <= r.keys() and len(r["uuid"]) == 36 and r["latency_ms"] > 0 for r in rows)
    assert [r["seq_len"] for r in rows] == [1, 7]
    assert res["combined_score"] == pytest.approx(sum(r["speedup_vs_reference"] for r in rows) / 2)
    assert res["max_rel_l2_error"] < 1e-2


def test_a_kernel_file_is_packed_alone_as_a_python_variant(tmp_path):
    v = evaluate.load_candidate(str(EXAMPLES / "initial_program.py"), tmp_path / "w")
    assert v.spec.language == "python" and v.spec.entry_point == "initial_program.py::run"
    assert v.spec.destination_passing_style and list(v.source_files()) == ["initial_program.py"]
    code, res = eval_json(EXAMPLES / "initial_program.py", *CPU, "--quick", "--seq-len", "3")
    assert code == 0 and res["candidate"] == "initial_program" and res["combined_score"] > 0


def test_a_kernel_file_that_imports_triton_is_a_triton_variant(tmp_path):
    path = kernel(
        tmp_path,
        "import torch\nimport triton\nimport triton.language as tl\n\ndef main(*a):\n    pass\n",
        "My Kernel.v2.py",
    )
    v = evaluate.load_candidate(str(path), tmp_path / "w", entry="main")
    assert v.spec.language == "triton" and v.spec.entry_point == "My Kernel.v2.py::main"
    assert v.spec.target_hardware == ["cuda"] and v.name == "my-kernel.v2"
    with pytest.raises(FibmoeError, match="not a Python function name"):
        evaluate.load_candidate(str(path), tmp_path / "w", entry="no-such")


def test_a_solution_json_is_a_candidate(tmp_path):
    sol = variants.pack(variants.resolve(["r1-torch"])[0], SMALL_NAME)
    (tmp_path / "s.json").write_text(variants.solution_json(sol))
    code, res = eval_json(tmp_path / "s.json", *CPU, "--seq-len", "1", "--quick")
    assert code == 0 and res["candidate"] == "r1-torch" and res["all_passed"]


def test_build_failure_returns_the_error_text(tmp_path):
    code, res = eval_json(kernel(tmp_path, "def run(:\n    pass\n"), *CPU, "--quick")
    assert code == 1 and res["combined_score"] == 0.0 and res["stage"] == "build" and not res["all_passed"]
    assert "SyntaxError" in res["error"] and "cand.py" in res["error"]
    assert {r["status"] for r in res["per_workload"]} == {"COMPILE_ERROR"} and res["passed"] == 0
    code, res = eval_json(kernel(tmp_path, "def other():\n    pass\n", "noentry.py"), *CPU, "--quick")
    assert code == 1 and res["stage"] == "build" and "run" in res["error"]


def test_runtime_error_returns_the_error_text(tmp_path):
    body = f"def run({ARGS}):\n    raise ValueError('boom at T=%d' % hs.shape[0])\n"
    code, res = eval_json(kernel(tmp_path, body), *CPU, "--quick", "--seq-len", "3")
    assert code == 1 and res["combined_score"] == 0.0 and res["stage"] == "check"
    assert res["error"].startswith("RUNTIME_ERROR on workload") and "ValueError: boom at T=3" in res["error"]
    assert res["per_workload"][0]["latency_ms"] is None


def test_a_crash_while_timed_is_still_a_json_failure(tmp_path):
    # Correct on the check's calls, then raises: the bench must not take the evaluator down.
    body = (
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('ip', r'{EXAMPLES / 'initial_program.py'}')\n"
        "ip = importlib.util.module_from_spec(spec); spec.loader.exec_module(ip)\n"
        "calls = [0]\n"
        f"def run({ARGS}):\n"
        "    calls[0] += 1\n"
        "    if calls[0] > 2:\n        raise RuntimeError('CUDA error: an illegal memory access was encountered')\n"
        "    ip.run(routing_logits, routing_bias, hs, hs_scale, w1, w1s, w2, w2s, offset, scale, output)\n"
    )
    code, res = eval_json(kernel(tmp_path, body), *CPU, "--quick", "--seq-len", "1")
    assert code == 1 and res["combined_score"] == 0.0 and res["stage"] == "bench"
    assert "illegal memory access" in res["error"] and res["per_workload"][0]["status"] == "RUNTIME_ERROR"


def test_wrong_numbers_score_zero_even_if_some_workloads_pass(tmp_path):
    # Right only for T=1: the zeroing rule makes the combined score 0.
    body = (
        "import torch\nimport importlib.util, pathlib\n"
        f"spec = importlib.util.spec_from_file_location('ip', r'{EXAMPLES / 'initial_program.py'}')\n"
        "ip = importlib.util.module_from_spec(spec); spec.loader.exec_module(ip)\n"
        f"def run({ARGS}):\n"
        "    ip.run(routing_logits, routing_bias, hs, hs_scale, w1, w1s, w2, w2s, offset, scale, output)\n"
        "    if hs.shape[0] > 1:\n        output.mul_(3)\n"
    )
    code, res = eval_json(kernel(tmp_path, body), *CPU, "--quick", "--seq-len", "1", "--seq-len", "16")
    assert code == 1 and res["combined_score"] == 0.0 and (res["passed"], res["workloads"]) == (1, 2)
    bad = [r for r in res["per_workload"] if r["status"] != "PASSED"]
    assert [r["status"] for r in bad] == ["INCORRECT_NUMERICAL"] and "matched ratio" in res["error"]


def test_bad_input_is_one_error_line(tmp_path):
    for target, why in (
        (tmp_path / "none.py", "no such kernel file"),
        (tmp_path / "none.json", "no such Solution"),
        ("no-such-variant", "unknown variant"),
    ):
        r = runner.invoke(app, ["eval", str(target), *CPU])
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert r.exit_code == 2 and len(lines) == 1 and why in lines[0] and "Traceback" not in r.output


def test_quick_picks_five_workloads_spread_over_log_t():
    ds = dataset.load(CONTEST.name)
    picked = evaluate.quick_workloads(ds.workloads)
    assert [w.workload.axes["seq_len"] for w in picked] == [1, 80, 901, 14, 14107]  # dataset order kept
    small = dataset.load(SMALL_NAME).workloads
    assert len(evaluate.quick_workloads(small)) == 5 and evaluate.quick_workloads(small[:3]) == small[:3]


def test_result_applies_the_zeroing_rule():
    base = {"candidate": "c"}
    ok = {
        "variant": "c",
        "uuid": "u1",
        "seq_len": 1,
        "status": "PASSED",
        "speedup_vs_reference": 4.0,
        "latency_ms": 1.0,
        "fraction_of_floor": 0.5,
        "rel_l2_error": 1e-3,
        "message": "",
    }
    res = evaluate.result(base, [ok, {**ok, "uuid": "u2", "speedup_vs_reference": 2.0}], "bench")
    assert res["combined_score"] == 3.0 and res["all_passed"] and res["mean_fraction_of_floor"] == 0.5
    bad = {**ok, "uuid": "u3", "status": "TIMEOUT", "speedup_vs_reference": None, "message": "timeout after 300 s"}
    res = evaluate.result(base, [ok, bad], "bench")
    assert res["combined_score"] == 0.0 and res["passed"] == 1 and "TIMEOUT on workload u3" in res["error"]


def test_official_mode_uses_the_benchmark(monkeypatch):
    ds = dataset.load(SMALL_NAME)
    factory = timed_benchmark_factory(monkeypatch, 2.0, ref=6.0)
    v = variants.resolve(["r1-torch"])[0]
    res = evaluate.evaluate(v, ds, ds.workloads[:2], "cpu", quick=True, official=True, benchmark_factory=factory)
    assert res["combined_score"] == pytest.approx(3.0) and res["mode"] == "quick official"
    assert res["per_workload"][0]["matched_ratio"] == 0.999


def test_ncu_figures_are_added_or_their_error(monkeypatch):
    ds = dataset.load(SMALL_NAME)
    v = variants.resolve(["r1-torch"])[0]
    summary = {
        "kernels": 3,
        "gpu_time_us": 64.0,
        "bound": "memory-bound",
        "reading": "memory-bound: DRAM 78%",
        "hottest": {
            "name": "_gemm1",
            "share": 0.6,
            "duration_us": 41.0,
            "sm_throughput_pct": 22.0,
            "dram_throughput_pct": 78.0,
            "achieved_occupancy_pct": 31.0,
        },
    }
    res = evaluate.add_ncu({}, v, ds, ds.workloads, "cuda:0", profile=lambda *a: summary)
    n = res["ncu"]
    assert n["seq_len"] == 7 and n["kernel"] == "_gemm1" and n["bound"] == "memory-bound"
    assert (n["sm_throughput_pct"], n["dram_throughput_pct"], n["achieved_occupancy_pct"]) == (22.0, 78.0, 31.0)

    def broken(*a):
        raise FibmoeError("ncu failed (exit 1): ERR_NVGPUCTRPERM")

    assert evaluate.add_ncu({}, v, ds, ds.workloads, "cuda:0", profile=broken)["ncu"]["error"].startswith("ncu failed")


def _example_evaluator():
    spec = importlib.util.spec_from_file_location("fibmoe_openevolve_evaluator", EXAMPLES / "evaluator.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_openevolve_example_evaluator_scores_the_initial_program(monkeypatch):
    mod = _example_evaluator()
    monkeypatch.setenv("FIBMOE_EVAL_ARGS", "--definition small --device cpu --seq-len 3")
    got = mod.evaluate_stage1(str(EXAMPLES / "initial_program.py"))
    metrics = got if isinstance(got, dict) else got.metrics
    assert metrics["combined_score"] > 0 and metrics["pass_rate"] == 1.0
    assert all(isinstance(x, float) for x in metrics.values())


def test_openevolve_example_evaluator_turns_failures_into_zero():
    mod = _example_evaluator()
    got = mod.to_openevolve(
        {
            "combined_score": 0.0,
            "passed": 0,
            "workloads": 5,
            "error": "COMPILE_ERROR ...",
            "per_workload": [
                {
                    "seq_len": 1,
                    "status": "COMPILE_ERROR",
                    "latency_ms": None,
                    "speedup_vs_reference": None,
                    "rel_l2_error": None,
                    "message": "",
                }
            ],
        }
    )
    metrics = got if isinstance(got, dict) else got.metrics
    assert metrics == {"combined_score": 0.0, "pass_rate": 0.0}
    assert mod.to_openevolve({"combined_score": 0.0, "error": "no JSON"}) is not None
