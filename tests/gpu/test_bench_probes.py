"""On a GPU: bench measures the empty-launch spans and dense cuBLAS FP8 GEMMs with the solutions' protocol,
and stores them; the runner's mean agrees with flashinfer-bench's own time_runnable on the same call."""

import json

import pytest
import torch
from typer.testing import CliRunner

from fibmoe import runner
from fibmoe.cli import app

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_launch_spans_are_measured_in_a_child():
    spans = runner.launch_spans("cuda", runner.Settings())
    assert 1e-3 < spans["empty_triton_kernel"]["mean_ms"] < 1.0, spans
    assert 0 < spans["empty_python_call"]["mean_ms"] < spans["empty_triton_kernel"]["mean_ms"] * 2
    assert 0 < spans["empty_triton_kernel_gpu_side"]["mean_ms"] < spans["empty_triton_kernel"]["mean_ms"]


def test_bench_stores_launch_spans_and_the_dense_gemm_beside_the_floor(tmp_path):
    r = CliRunner().invoke(
        app,
        ["bench", "r1-torch", "--definition", "contest", "-t", "1", "--dense-gemm", "--trials", "1",
         "--results-dir", str(tmp_path), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    payload = json.loads(r.stdout)
    assert payload["launch"]["empty_triton_kernel"]["mean_ms"] > 0
    rec = payload["records"][0]
    assert rec["dense_gemm_ms"] > 0 and rec["x_dense_gemm"] > 0 and rec["floor_ms"] > 0
    assert rec["median_ms"] > 0


def test_mean_agrees_with_time_runnable():
    from flashinfer_bench.bench.timing import time_runnable

    a = torch.randn(4096, 4096, device="cuda")
    mine = sum(runner.time_spans(torch.mm, [a, a], "cuda", 10, 50)) / 50
    theirs = time_runnable(torch.mm, [a, a], 10, 50, "cuda")
    assert mine == pytest.approx(theirs, rel=0.25)


def test_the_gpu_side_span_leaves_the_host_path_out():
    """A call that spends 200 us on the host before its kernel: the harness's span holds those 200 us (the
    GPU waits for the launch), the queued span does not (the launch is queued behind the spin)."""
    import time

    a = torch.randn(256, 256, device="cuda")

    def slow_host(x):
        time.sleep(200e-6)
        return x * 2

    harness = sum(runner.time_spans(slow_host, [a], "cuda", 5, 20)) / 20
    queued = runner.queued_spans(slow_host, [a], "cuda", 20)
    assert len(queued) == 20 and min(queued) > 0
    assert harness > 0.15 and sum(queued) / 20 < 0.1, (harness, queued)


def test_bench_records_the_gpu_side_beside_the_mean(tmp_path):
    r = CliRunner().invoke(
        app, ["bench", "r1-torch", "--definition", "contest", "-t", "1", "--trials", "1", "--results-dir",
              str(tmp_path), "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    rec = json.loads(r.stdout)["records"][0]
    assert 0 < rec["gpu_side_ms"] <= rec["latency_ms"] * 1.5, rec
