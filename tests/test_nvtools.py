"""Nsight Compute and compute-sanitizer wrappers with fake executables on PATH (no GPU, no tools needed):
the command lines, the parsing, the reading of the hottest kernel, reports kept under results/, and one
clear error line where a tool is absent or there is no GPU."""

import json

import pytest
from fib_fakes import SMALL_NAME, fake_tool, only_on_path
from typer.testing import CliRunner

from fibmoe import dataset, nvtools, variants
from fibmoe.cli import app
from fibmoe.errors import FibmoeError

METRICS = list(nvtools.NCU_METRICS.values())
HEADER = "ID,Process ID,Process Name,Host Name,Kernel Name,Context,Stream,Block Size,Grid Size,Device,CC".split(",")
HEADER += METRICS
UNITS = [""] * 11 + ["nsecond", "%", "%", "%", "%", "%", "register/thread"]


def kernel_row(i, name, grid, *metrics):
    return [str(i), "1", "python3", "h", name, "1", "7", "(256, 1, 1)", grid, "0", "9.0", *metrics]


KERNELS = [  # duration (ns, with a thousands separator), SM %, memory %, DRAM %, occupancy %, theoretical %, regs
    kernel_row(0, "_moe_gemm1", "(132, 1, 1)", "41,250", "22.5", "81.0", "78.4", "31.2", "50", "128"),
    kernel_row(1, "_route", "(1, 1, 1)", "3,100", "2.0", "1.5", "1.0", "6.2", "100", "40"),
    kernel_row(2, "_moe_gemm2", "(64, 1, 1)", "20,000", "70.0", "40.0", "35.0", "60.0", "75", "96"),
]


def csv_text(rows):
    return "\n".join(",".join(f'"{c}"' for c in r) for r in rows)


FAKE_NCU = """
import json
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"tool": "ncu", "argv": argv}) + "\\n")
if "--import" in argv:
    print("==PROF== some noise before the CSV")
    print(open(os.environ["FAKE_NCU_CSV"]).read())
    sys.exit(0)
if os.environ.get("FAKE_NCU_FAIL"):
    print("==ERROR== ERR_NVGPUCTRPERM - The user does not have permission to access NVIDIA GPU Performance Counters")
    sys.exit(1)
open(argv[argv.index("-o") + 1] + ".ncu-rep", "wb").write(b"fake report")
print("==PROF== Disconnected from process 1")
"""

FAKE_SANITIZER = """
import json
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"tool": "compute-sanitizer", "argv": argv,
                        "no_caching": os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING")}) + "\\n")
tool = argv[argv.index("--tool") + 1]
out, rc = {
    "memcheck": ("========= COMPUTE-SANITIZER\\n========= ERROR SUMMARY: 0 errors", 0),
    "racecheck": ("========= COMPUTE-SANITIZER\\n========= Error: Race reported between Write access at _gemm1+0x10\\n"
                  "=========     and Read access at _gemm1+0x20\\n"
                  "========= RACECHECK SUMMARY: 2 hazards displayed (1 error, 1 warning)", 0),
    "initcheck": ("========= COMPUTE-SANITIZER\\n========= Uninitialized __global__ memory read of size 4 bytes\\n"
                  "=========     at _combine+0x80\\n========= ERROR SUMMARY: 3 errors", 1),
    "synccheck": ("========= COMPUTE-SANITIZER\\nTraceback (most recent call last):\\n"
                  "RuntimeError: CUDA error: unspecified launch failure", 1),
}[tool]
print(out)
sys.exit(rc)
"""


@pytest.fixture
def tools(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "ncu", FAKE_NCU)
    fake_tool(bin_dir, "compute-sanitizer", FAKE_SANITIZER)
    only_on_path(monkeypatch, bin_dir)
    (tmp_path / "kernels.csv").write_text(csv_text([HEADER, UNITS] + KERNELS))
    monkeypatch.setenv("FAKE_NCU_CSV", str(tmp_path / "kernels.csv"))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    return tmp_path


def calls(tmp_path):
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


@pytest.fixture
def small():
    ds = dataset.load(SMALL_NAME)
    return ds, ds.workloads[2], variants.resolve(["r1-torch"])[0]


def test_parse_raw_page_units_and_missing_values():
    kernels = nvtools.parse_ncu_csv("==PROF== noise\n" + csv_text([HEADER, UNITS] + KERNELS))
    assert [k["name"] for k in kernels] == ["_moe_gemm1", "_route", "_moe_gemm2"]
    assert kernels[0]["duration_us"] == pytest.approx(41.25)  # "41,250" nanoseconds
    assert kernels[0]["dram_throughput_pct"] == 78.4 and kernels[0]["registers_per_thread"] == 128
    us_units = UNITS[:11] + ["usecond"] + UNITS[12:]
    row = KERNELS[1][:11] + ["3.1", "n/a"] + KERNELS[1][13:]
    k = nvtools.parse_ncu_csv(csv_text([HEADER, us_units, row]))[0]
    assert k["duration_us"] == pytest.approx(3.1) and k["sm_throughput_pct"] is None
    assert nvtools.parse_ncu_csv("no csv here") == []


@pytest.mark.parametrize(
    "sm,dram,mem,bound",
    [
        (22.5, 78.4, 81.0, "memory-bound"),
        (85.0, 40.0, 45.0, "compute-bound"),
        (20.0, 15.0, 18.0, "latency-bound"),
        (59.0, 59.0, 59.0, "latency-bound"),
        (60.0, 10.0, 10.0, "compute-bound"),
    ],
)
def test_reading_of_a_kernel(sm, dram, mem, bound):
    got, line = nvtools.classify(
        {
            "sm_throughput_pct": sm,
            "dram_throughput_pct": dram,
            "memory_throughput_pct": mem,
            "achieved_occupancy_pct": 30.0,
        }
    )
    assert got == bound and line.startswith(bound) and "occupancy 30%" in line


def test_profile_keeps_the_report_and_reads_the_hottest_kernel(tools, small):
    ds, trace, v = small
    payload, path = nvtools.profile_variant(
        v, ds, trace, "cuda:0", tools / "results", slug="h100", provenance={"device_name": "fake"}
    )
    n = payload["ncu"]
    assert n["hottest"]["name"] == "_moe_gemm1" and n["kernels"] == 3
    assert n["hottest"]["share"] == pytest.approx(41.25 / 64.35)
    assert n["bound"] == "memory-bound" and n["reading"].startswith("memory-bound: DRAM 78%")
    assert path.parent == tools / "results" / "h100" and path.name.startswith("profile-")
    assert json.loads(path.read_text())["ncu"]["report"] == n["report"]
    report = tools / "results" / "h100"
    assert len(list(report.glob("profile-r1-torch-*.ncu-rep"))) == 1 and len(list(report.glob("*.csv"))) == 1
    profiled, imported = calls(tools)
    argv = profiled["argv"]
    assert argv[:2] == ["--profile-from-start", "off"] and "--set" in argv
    assert argv[argv.index("--clock-control") + 1] == "none"  # the card's clocks are left as they are
    assert ",".join(METRICS) in argv
    runner = argv[argv.index("-m") :]
    assert runner[:2] == ["-m", "fibmoe.nvtools"] and "--profile-range" in runner
    assert runner[runner.index("--workload") + 1] == trace.workload.uuid
    assert runner[runner.index("--definition") + 1] == SMALL_NAME
    assert imported["argv"][:2] == ["--import", n["report"]] and "raw" in imported["argv"]


def test_profile_names_the_counter_permission_problem(tools, small, monkeypatch):
    monkeypatch.setenv("FAKE_NCU_FAIL", "1")
    ds, trace, v = small
    with pytest.raises(FibmoeError, match="ERR_NVGPUCTRPERM.*NVreg_RestrictProfilingToAdminUsers"):
        nvtools.profile_variant(v, ds, trace, "cuda:0", tools / "results", slug="h100", provenance={})


def test_sanitize_runs_each_tool_and_keeps_each_log(tools, small):
    ds, trace, v = small
    payload, path = nvtools.sanitize_variant(v, ds, trace, "cuda:0", tools / "results", slug="h100", provenance={})
    got = {c["tool"]: c for c in payload["checks"]}
    assert [c["tool"] for c in payload["checks"]] == list(nvtools.SANITIZER_TOOLS)
    assert got["memcheck"]["status"] == "clean" and got["memcheck"]["errors"] == 0
    race = got["racecheck"]
    assert race["status"] == "issues" and (race["errors"], race["warnings"]) == (1, 1)
    assert got["racecheck"]["first_issue"].startswith("Error: Race reported")
    assert got["initcheck"]["status"] == "issues" and got["initcheck"]["errors"] == 3
    assert got["initcheck"]["first_issue"] == "Uninitialized __global__ memory read of size 4 bytes"
    assert got["synccheck"]["status"] == "failed" and "unspecified launch failure" in got["synccheck"]["first_issue"]
    assert not payload["clean"] and json.loads(path.read_text())["checks"] == payload["checks"]
    for c in payload["checks"]:
        assert c["log"].endswith(f"-{c['tool']}.txt") and "COMPUTE-SANITIZER" in open(c["log"]).read()
    for call in calls(tools):
        assert call["no_caching"] == "1" and "--profile-range" not in call["argv"]
    with pytest.raises(FibmoeError, match="unknown sanitizer tool 'leakcheck'"):
        nvtools.sanitize_variant(v, ds, trace, "cuda:0", tools / "results", ("leakcheck",), slug="h100", provenance={})


def test_cli_sanitize_prints_a_summary_and_fails_on_issues(tools, small, monkeypatch):
    from fibmoe import cli

    monkeypatch.setattr(cli, "_setup", lambda *a: ("cuda:0", small[0], [small[1]]))
    monkeypatch.setattr(nvtools, "sanitize_variant", _with_fake_gpu(nvtools.sanitize_variant))
    r = CliRunner().invoke(app, ["sanitize", "r1-torch", "--tool", "memcheck", "--results-dir", str(tools / "res")])
    assert r.exit_code == 0, r.output
    assert "memcheck" in r.output and "clean" in r.output
    r = CliRunner().invoke(app, ["sanitize", "r1-torch", "--tool", "initcheck", "--results-dir", str(tools / "res")])
    assert r.exit_code == 1 and "Uninitialized __global__ memory read" in r.output


def test_cli_profile_prints_the_top_kernels_and_the_report(tools, small, monkeypatch):
    from fibmoe import cli

    monkeypatch.setattr(cli, "_setup", lambda *a: ("cuda:0", small[0], [small[1]]))
    monkeypatch.setattr(nvtools, "profile_variant", _with_fake_gpu(nvtools.profile_variant))
    r = CliRunner().invoke(app, ["profile", "r1-torch", "-w", "x", "--results-dir", str(tools / "res")])
    assert r.exit_code == 0, r.output
    assert "_moe_gemm1" in r.output and "hottest kernel: memory-bound" in r.output and ".ncu-rep" in r.output
    r = CliRunner().invoke(app, ["profile", "r1-torch", "-w", "x", "--results-dir", str(tools / "res"), "--json"])
    assert json.loads(r.stdout)["ncu"]["bound"] == "memory-bound"


def _with_fake_gpu(fn):
    def wrapped(*args, **kwargs):
        return fn(*args, **{**kwargs, "slug": "h100", "provenance": {"device_name": "fake"}})

    return wrapped


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_absent_tools_are_one_clear_error_line(tmp_path, monkeypatch):
    only_on_path(monkeypatch, tmp_path / "empty-bin")
    r = CliRunner().invoke(app, ["profile", "r1-torch", "--workload", "e05c6c03"])
    assert r.exit_code == 2 and "ncu is not on PATH" in one_error_line(r)
    r = CliRunner().invoke(app, ["sanitize", "r1-torch", "--workload", "e05c6c03"])
    assert r.exit_code == 2 and "compute-sanitizer is not on PATH" in one_error_line(r)
    r = CliRunner().invoke(app, ["eval", "r1-torch", "--ncu", "--json"])
    assert r.exit_code == 2 and "ncu is not on PATH" in one_error_line(r)


def test_no_gpu_is_one_clear_error_line(tools):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    r = CliRunner().invoke(app, ["profile", "r1-torch", "--workload", "958b9f2e", "--definition", "small"])
    assert r.exit_code == 2 and "needs a CUDA GPU" in one_error_line(r)
    r = CliRunner().invoke(app, ["sanitize", "r1-torch", "--definition", "small"])
    assert r.exit_code == 2 and "needs a CUDA GPU" in one_error_line(r)
    r = CliRunner().invoke(app, ["eval", "r1-torch", "--ncu", "--json"])
    assert r.exit_code == 2 and "needs a CUDA GPU" in one_error_line(r)


def test_the_runner_reports_bad_input_in_one_line(tmp_path, capsys):
    rc = nvtools.main(["--solution", str(tmp_path / "none.json"), "--definition", SMALL_NAME, "--workload", "958b"])
    assert rc == 2 and "cannot read" in capsys.readouterr().err
