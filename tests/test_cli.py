"""The CLI through Typer's test runner: exit codes, JSON shapes, and one clear line for bad input."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fibmoe import variants
from fibmoe.cli import app

runner = CliRunner()
SMALL = ["--definition", "small", "--device", "cpu"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def write_variant(folder: Path, body: str, dps: bool = True, **spec_overrides) -> Path:
    folder.mkdir(parents=True)
    spec = {
        "name": folder.name.replace("_", "-"),
        "rung": 9,
        "language": "python",
        "entry_point": "main.py::run",
        "destination_passing_style": dps,
        "description": "a test variant",
        "target_hardware": ["cpu", "cuda"],
        **spec_overrides,
    }
    (folder / "variant.toml").write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in spec.items()) + "\n")
    (folder / "main.py").write_text(body)
    return folder


ARGS = "routing_logits, routing_bias, hs, hs_scale, w1, w1s, w2, w2s, offset, scale"


def test_check_default_job_passes_on_cpu():
    r = invoke("check", "r1-torch", *SMALL, "--trials", "1", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 6
    assert {"variant", "uuid", "seq_len", "status", "max_abs_error", "rel_l2_error", "matched_ratio"} <= rows[0].keys()
    assert all(row["status"] == "PASSED" and len(row["uuid"]) == 36 for row in rows)


def test_check_selects_workloads_by_seq_len_and_uuid_prefix():
    r = invoke("check", "r1-torch", *SMALL, "--trials", "1", "--seq-len", "7", "--json")
    assert [row["seq_len"] for row in json.loads(r.stdout)] == [7]
    uuid = json.loads(r.stdout)[0]["uuid"]
    r = invoke("check", "r1-torch", *SMALL, "--trials", "1", "--workload", uuid[:6], "--json")
    assert [row["uuid"] for row in json.loads(r.stdout)] == [uuid]
    r = invoke("check", "r1-torch", *SMALL, "--workload", "zzzz")
    assert r.exit_code == 2 and "zzzz" in one_error_line(r)


def test_unknown_variant_is_one_clear_error():
    r = invoke("check", "no-such-variant", *SMALL)
    assert r.exit_code == 2
    assert "unknown variant 'no-such-variant'" in one_error_line(r)


def test_malformed_spec_names_the_field(tmp_path):
    folder = write_variant(tmp_path / "bad", "def run(*a): pass\n", language="fortran")
    r = invoke("check", folder, *SMALL)
    assert r.exit_code == 2
    assert "field 'language'" in one_error_line(r)
    (folder / "variant.toml").write_text("name = [unclosed\n")
    r = invoke("check", folder, *SMALL)
    assert r.exit_code == 2 and "cannot read variant spec" in one_error_line(r)


def test_non_dataset_path_is_one_clear_error(tmp_path):
    r = invoke("check", "r1-torch", *SMALL, "--dataset", tmp_path)
    assert r.exit_code == 2
    assert "is not a flashinfer-bench dataset" in one_error_line(r)
    assert list(tmp_path.iterdir()) == []  # nothing created in someone else's folder


def test_dataset_env_var_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("FIB_DATASET_PATH", str(tmp_path))
    r = invoke("check", "r1-torch", *SMALL)
    assert r.exit_code == 2 and str(tmp_path) in one_error_line(r)
    shutil.copytree(Path(variants.REPO_ROOT) / "workloads" / "definitions", tmp_path / "definitions")
    r = invoke("check", "r1-torch", "--definition", "small", "--device", "cpu", "--dataset", tmp_path)
    assert r.exit_code == 2 and "no workloads" in one_error_line(r)


@pytest.mark.parametrize(
    "body,status",
    [
        (
            f"import torch\ndef run({ARGS}):\n"
            "    return torch.zeros(hs.shape[0], hs.shape[1] + 1, dtype=torch.bfloat16)\n",
            "INCORRECT_SHAPE",
        ),
        (f"import torch\ndef run({ARGS}):\n    return torch.zeros(hs.shape[0], hs.shape[1])\n", "INCORRECT_DTYPE"),
        (f"def run({ARGS}):\n    raise ValueError('boom')\n", "RUNTIME_ERROR"),
    ],
)
def test_wrong_outputs_are_caught(tmp_path, body, status):
    folder = write_variant(tmp_path / "wrong", body, dps=False)
    r = invoke("check", folder, *SMALL, "--trials", "1", "--seq-len", "3", "--json")
    assert r.exit_code == 1
    assert json.loads(r.stdout)[0]["status"] == status


def test_unwritten_output_is_caught_by_the_nan_poison(tmp_path):
    # Writes every row but the last: a harness that allocated with torch.empty could pass this.
    body = f"def run({ARGS}, output):\n    output[:-1] = 0\n"
    folder = write_variant(tmp_path / "lazy", body)
    r = invoke("check", folder, *SMALL, "--trials", "1", "--seq-len", "40", "--json")
    row = json.loads(r.stdout)[0]
    assert r.exit_code == 1 and row["status"] == "INCORRECT_NUMERICAL" and "NaN" in row["message"]


def test_variants_lists_the_ladder_as_json():
    r = invoke("variants", "--json")
    assert r.exit_code == 0
    rows = json.loads(r.stdout)
    assert isinstance(rows, list) and {"name", "rung", "language", "changes", "last_status"} <= rows[0].keys()
    assert rows[0]["name"] == "r1-torch" and rows[0]["rung"] == 1
    assert [row["rung"] for row in rows if row["rung"]] == sorted(row["rung"] for row in rows if row["rung"])


def test_variants_new_copies_a_variant(tmp_path, monkeypatch):
    monkeypatch.setattr(variants, "VARIANTS_DIR", tmp_path)
    shutil.copytree(Path(variants.REPO_ROOT) / "variants" / "r1_torch", tmp_path / "r1_torch")
    r = invoke("variants", "new", "r1-faster", "--from", "r1-torch")
    assert r.exit_code == 0, r.output
    new = variants.load_variant(tmp_path / "r1_faster")
    assert new.name == "r1-faster" and new.spec.rung is None
    assert (tmp_path / "r1_faster" / "main.py").read_text() == (tmp_path / "r1_torch" / "main.py").read_text()
    r = invoke("variants", "new", "r1-faster", "--from", "r1-torch")
    assert r.exit_code == 2 and "already exists" in one_error_line(r)


def test_pack_unpack_pack_is_identical_and_valid(tmp_path):
    from flashinfer_bench import Solution

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert invoke("pack", "r1-torch", "-o", first, "--starter-kit", tmp_path / "kit").exit_code == 0
    sol = Solution.model_validate_json(first.read_text())
    assert sol.definition == "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
    assert {s.path for s in sol.sources} == {"main.py", "reference.py", "grouping.py"}
    assert invoke("unpack", first, tmp_path / "unpacked").exit_code == 0
    assert invoke("pack", tmp_path / "unpacked", "-o", second).exit_code == 0
    assert first.read_text() == second.read_text()
    kit = tmp_path / "kit"
    assert (kit / "packed_solution.json").read_text() == first.read_text()
    assert 'entry_point = "main.py::run"' in (kit / "config.toml").read_text()
    assert (kit / "solution" / "python" / "main.py").is_file()
    r = invoke("unpack", first, tmp_path / "unpacked")
    assert r.exit_code == 2 and "not empty" in one_error_line(r)


def test_unpack_rejects_a_file_that_is_not_a_solution(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"name": "x"}')
    r = invoke("unpack", bad, tmp_path / "out")
    assert r.exit_code == 2 and "not a valid Solution" in one_error_line(r)
    r = invoke("unpack", tmp_path / "missing.json", tmp_path / "out")
    assert r.exit_code == 2 and "cannot read" in one_error_line(r)


def test_bench_on_cpu_writes_results_with_provenance(tmp_path):
    r = invoke(
        "bench", "r1-torch", *SMALL, "--seq-len", "3", "--warmup", "1", "--iterations", "3", "--trials", "2",
        "--results-dir", tmp_path, "--json",
    )
    assert r.exit_code == 0, r.output
    files = list((tmp_path / "cpu").glob("bench-*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data == json.loads(r.stdout) | {"kind": "bench"}
    assert data["provenance"]["timer"] == "CPU wall clock"
    assert {"device_name", "torch", "triton", "flashinfer_bench", "git_revision", "date"} <= data["provenance"].keys()
    rec = data["records"][0]
    assert {"variant", "uuid", "seq_len", "status", "latency_ms", "reference_ms", "floor_ms"} <= rec.keys()
    assert rec["status"] == "PASSED" and rec["latency_ms"] > 0 and len(rec["trial_ms"]) == 2
    assert rec["floor_ms"] is None  # no roofline for a CPU
