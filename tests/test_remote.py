"""Modal, offline: the app's construction opens no connection, the remote function's body runs in-process
(through `.local()` and directly), the Volume layout checks, fan-out and merge, and the error lines for
missing credentials, a missing modal package and unknown GPU strings."""

import importlib
import json
import shutil
import socket
import subprocess
import sys
import warnings

import pytest
from fib_fakes import SMALL_NAME, FakeRunner, add_baseline_solution, small_dataset_copy, timed_benchmark_factory
from typer.testing import CliRunner

from fibmoe import dataset, official, remote, variants
from fibmoe.cli import app
from fibmoe.errors import FibmoeError


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip() and not line.startswith("running ")]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def volume(tmp_path):
    return small_dataset_copy(tmp_path / "data")


def request(volume, **kw):
    sol = variants.solution_json(variants.pack(variants.resolve(["r1-torch"])[0], SMALL_NAME))
    base = {
        "solutions": [sol],
        "definition": SMALL_NAME,
        "dataset_root": str(volume),
        "gpu": "B200",
        "rungs": {"r1-torch": 1},
        "git_revision": "abc123+dirty",
        "settings": None,
    }
    return {**base, **kw}


def test_app_is_built_from_the_constants_without_a_connection(no_network):
    modal = pytest.importorskip("modal")  # the GPU machines run without it
    from fibmoe import modal_app

    modal_app = importlib.reload(modal_app)  # constructing everything again, with the network refused
    assert isinstance(modal_app.app, modal.App) and modal_app.app.name == remote.APP_NAME
    assert isinstance(modal_app.image, modal.Image)
    spec = modal_app.bench_remote._spec_
    assert spec.gpus == remote.DEFAULT_GPU == "B200"
    assert list(spec.volumes) == [remote.VOLUME_MOUNT] == ["/data"]
    assert remote.VOLUME_NAME == "flashinfer-trace" and remote.TIMEOUT_S >= 600
    assert any(p.startswith("flashinfer-bench==") for p in remote.PIP_PACKAGES)
    assert any(p.startswith("torch==") for p in remote.PIP_PACKAGES)
    assert any(p.startswith("triton==") for p in remote.PIP_PACKAGES)


def test_the_package_works_without_modal():
    # As on the GPU machine, where modal is not installed: every module imports, --remote says what to do.
    code = (
        "import sys; sys.modules['modal'] = None\n"
        "import fibmoe.remote, fibmoe.official, fibmoe.evaluate, fibmoe.nvtools, fibmoe.cli\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(fibmoe.cli.app, ['bench', '--remote', 'b200', 'r1-torch'])\n"
        "print(r.exit_code); print(r.output)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=variants.REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "2" and "needs the modal package" in lines[-1] and "Traceback" not in proc.stdout


@pytest.mark.parametrize(
    "text,gpu",
    [
        ("b200", "B200"),
        ("h100", "H100"),
        ("H200", "H200"),
        ("h100!", "H100!"),
        ("b200:2", "B200:2"),
        ("a100-80gb", "A100-80GB"),
    ],
)
def test_gpu_strings(text, gpu):
    assert remote.resolve_gpu(text) == gpu


@pytest.mark.parametrize("text", ["z900", "b200:x", "b200:0", ""])
def test_unknown_gpu_is_one_clear_error(text):
    with pytest.raises(FibmoeError, match="GPU"):
        remote.resolve_gpu(text)
    if text:
        r = CliRunner().invoke(app, ["bench", "--remote", text, "r1-torch"])
        assert r.exit_code == 2 and "GPU" in one_error_line(r)


# ---- the Volume's layout ---------------------------------------------------------------------------


def test_good_layout_passes(volume):
    remote.check_volume_layout(volume, SMALL_NAME)
    remote.check_volume_layout(dataset.BUNDLED, "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048")


def test_empty_or_missing_volume(tmp_path):
    with pytest.raises(FibmoeError, match=r"is empty .*flashinfer-trace <dataset folder>/ /"):
        remote.check_volume_layout(tmp_path / "nothing", SMALL_NAME)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FibmoeError, match="trailing slash"):
        remote.check_volume_layout(tmp_path / "empty", SMALL_NAME)


def test_nested_upload_without_trailing_slash_is_named_with_its_fix(tmp_path):
    small_dataset_copy(tmp_path / "vol" / "mlsys26-contest")
    with pytest.raises(FibmoeError) as e:
        remote.check_volume_layout(tmp_path / "vol", SMALL_NAME)
    msg = str(e.value)
    assert "one level down" in msg and "without a trailing slash" in msg
    assert "modal volume rm -r flashinfer-trace /mlsys26-contest" in msg
    assert "modal volume put flashinfer-trace <dataset folder>/ /" in msg


def test_missing_empty_or_lfs_definition(volume):
    d = volume / "definitions" / "moe" / f"{SMALL_NAME}.json"
    with pytest.raises(FibmoeError, match="has no definition moe_other"):
        remote.check_volume_layout(volume, "moe_other")
    d.write_text("")
    with pytest.raises(FibmoeError, match="is empty"):
        remote.check_volume_layout(volume, SMALL_NAME)
    d.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    with pytest.raises(FibmoeError, match="Git LFS pointer"):
        remote.check_volume_layout(volume, SMALL_NAME)
    d.write_text("{not json")
    with pytest.raises(FibmoeError, match="not valid JSON"):
        remote.check_volume_layout(volume, SMALL_NAME)
    shutil.rmtree(volume / "definitions")
    (volume / "stray").mkdir()
    with pytest.raises(FibmoeError, match="no definitions/ folder"):
        remote.check_volume_layout(volume, SMALL_NAME)


def test_missing_workloads_or_blobs(volume):
    blobs = sorted((volume / "blob").rglob("*.safetensors"))
    blobs[0].write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(FibmoeError, match="Git LFS pointer, not the tensors"):
        remote.check_volume_layout(volume, SMALL_NAME)
    blobs[0].unlink()
    with pytest.raises(FibmoeError, match="tensors are missing from the Volume"):
        remote.check_volume_layout(volume, SMALL_NAME)
    (volume / "workloads" / "moe" / f"{SMALL_NAME}.jsonl").write_text("\n")
    with pytest.raises(FibmoeError, match="has no workloads"):
        remote.check_volume_layout(volume, SMALL_NAME)


# ---- the remote function's body ---------------------------------------------------------------------


def test_remote_function_local_call_returns_plain_json(monkeypatch, volume, no_network):
    pytest.importorskip("modal")
    from fibmoe import modal_app

    factory = timed_benchmark_factory(monkeypatch, 2.0, ref=8.0)
    monkeypatch.setattr(official, "default_benchmark_factory", factory)
    with warnings.catch_warnings():  # Modal: "executing locally ... no access to the mounted Volume"
        warnings.simplefilter("ignore")
        out = modal_app.bench_remote.local(request(volume))
    assert json.loads(json.dumps(out)) == out
    assert "error" not in out and out["definition"] == SMALL_NAME
    assert len(out["records"]) == 6 and {r["status"] for r in out["records"]} == {"PASSED"}
    assert out["records"][0]["speedup_vs_reference"] == pytest.approx(4.0)
    prov = out["provenance"]
    assert prov["git_revision"] == "abc123+dirty" and prov["remote"]["volume"] == "flashinfer-trace"
    assert out["official"]["dataset_workloads"] == 6 and out["official"]["settings"]["trials"] == 3
    assert out["summary"]["r1-torch"]["score_vs_baseline"] is None  # no baseline on this volume


def test_remote_body_reports_layout_errors_as_json(tmp_path):
    small_dataset_copy(tmp_path / "vol" / "nested")
    out = remote.remote_body(request(tmp_path / "vol"))
    assert set(out) == {"error"} and "trailing slash" in out["error"]


def test_remote_body_runs_the_baseline_on_blackwell_and_scores(monkeypatch, volume):
    add_baseline_solution(volume)
    lat = {"r1-torch": 4.0, official.BASELINE_NAME: 1.0}
    factory = timed_benchmark_factory(monkeypatch, lat)
    out = remote.remote_body(request(volume, workloads=None), benchmark_factory=factory, capability=(10, 0))
    assert out["official"]["baseline"]["ran"]
    assert out["summary"]["r1-torch"]["score_vs_baseline"] == pytest.approx(0.25)
    assert out["summary"]["r1-torch"]["mean_speedup_vs_reference"] == pytest.approx(5.0)
    out = remote.remote_body(request(volume), benchmark_factory=factory, capability=(9, 0))
    assert not out["official"]["baseline"]["ran"] and "sm_90" in out["summary"]["r1-torch"]["score_note"]


# ---- fan-out and merge -------------------------------------------------------------------------------


def test_requests_fan_out_by_variant_or_by_workload():
    s = official.OfficialSettings()
    reqs = remote.make_requests(["A", "B"], SMALL_NAME, "B200", s)
    assert len(reqs) == 1 and reqs[0]["solutions"] == ["A", "B"] and reqs[0]["workloads"] is None
    reqs = remote.make_requests(["A", "B"], SMALL_NAME, "B200", s, parallel=True)
    assert [r["solutions"] for r in reqs] == [["A"], ["B"]]
    reqs = remote.make_requests(["A"], SMALL_NAME, "B200", s, None, ["u1", "u2", "u3"], parallel=True)
    assert [r["workloads"] for r in reqs] == [["u1"], ["u2"], ["u3"]]
    assert json.loads(json.dumps(reqs)) == reqs and reqs[0]["dataset_root"] == "/data"
    with pytest.raises(FibmoeError):
        remote.make_requests(["A"], SMALL_NAME, "B200", s, parallel=True)


def test_run_remote_over_containers_merges_in_workload_order(monkeypatch, volume):
    factory = timed_benchmark_factory(monkeypatch, 2.0)
    seen = []

    def executor(gpu, requests):  # stands in for Modal: each request in its own "container"
        seen.append((gpu, len(requests)))
        return [remote.remote_body({**r, "dataset_root": str(volume)}, factory) for r in requests]

    chosen = variants.resolve(["r1-torch"])
    sols = [variants.pack(v, SMALL_NAME) for v in chosen]
    uuids = [w.workload.uuid for w in dataset.load(SMALL_NAME, volume).workloads]
    out = remote.run_remote(
        sols, SMALL_NAME, "b200", official.OfficialSettings(), all_uuids=uuids, parallel=True, executor=executor
    )
    assert seen == [("B200", 6)] and out["provenance"]["containers"] == 6
    assert [r["uuid"] for r in out["records"]] == uuids
    assert out["summary"]["r1-torch"]["passed"] == 6 and "over" not in out["summary"]["r1-torch"]["score_note"]
    assert len(FakeRunner.calls) == 6 and all(len(c["solutions"]) == 1 for c in FakeRunner.calls)


def test_per_variant_containers_each_pair_with_their_own_baseline(monkeypatch, volume):
    add_baseline_solution(volume)
    lat = {"r1-torch": 2.0, "r1-copy": 4.0, official.BASELINE_NAME: 1.0}
    factory = timed_benchmark_factory(monkeypatch, lat)
    r1 = variants.pack(variants.resolve(["r1-torch"])[0], SMALL_NAME)
    copy = r1.model_copy(update={"name": "r1-copy"})

    def executor(gpu, requests):
        return [remote.remote_body({**r, "dataset_root": str(volume)}, factory, capability=(10, 0)) for r in requests]

    out = remote.run_remote(
        [r1, copy], SMALL_NAME, "b200", official.OfficialSettings(), parallel=True, executor=executor
    )
    assert out["provenance"]["containers"] == 2
    assert sum(r["baseline"] for r in out["records"]) == 6  # one baseline row per workload, not per container
    assert out["summary"]["r1-torch"]["score_vs_baseline"] == pytest.approx(0.5)
    assert out["summary"]["r1-copy"]["score_vs_baseline"] == pytest.approx(0.25)
    assert [r["variant"] for r in out["records"][:3]] == ["r1-torch", "r1-copy", official.BASELINE_NAME]


def test_a_container_error_is_one_error(volume):
    with pytest.raises(FibmoeError, match="remote run: the Volume"):
        remote.merge([{"error": "the Volume flashinfer-trace is empty"}])


# ---- credentials, network -------------------------------------------------------------------------------


def test_credentials_are_checked_before_any_connection(monkeypatch, no_network):
    pytest.importorskip("modal")
    assert remote.credentials_problem(lambda key: None) == remote.NO_CREDENTIALS
    assert remote.credentials_problem(lambda key: {"token_id": "ak-1", "token_secret": "as-1"}[key]) == ""
    monkeypatch.setattr(remote, "credentials_problem", lambda get=None: remote.NO_CREDENTIALS)
    r = CliRunner().invoke(app, ["bench", "--remote", "b200", "r1-torch", "--definition", "small"])
    assert r.exit_code == 2
    line = one_error_line(r)
    assert "modal token new" in line and "MODAL_TOKEN_ID" in line


def test_modal_failures_map_to_one_line():
    modal = pytest.importorskip("modal")
    exc = modal.exception
    assert "modal token new" in str(remote.modal_error(modal, exc.AuthError("bad token")))
    assert "modal volume create flashinfer-trace" in str(remote.modal_error(modal, exc.NotFoundError("Volume")))
    assert "cannot reach Modal" in str(remote.modal_error(modal, exc.ConnectionError("down")))
    assert "cannot reach Modal" in str(remote.modal_error(modal, OSError("no route")))
    assert remote.modal_error(modal, KeyError("x")) is None  # a bug stays a bug
