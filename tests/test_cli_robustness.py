"""What a new user runs into: brackets in messages, a broken or duplicate variant beside good ones, a
write that fails half-way, a dataset cloned without Git LFS, and the small things (exit codes, help)."""

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_cli import ARGS, SMALL, invoke, one_error_line, write_variant

from fibmoe import variants

REPO = Path(variants.REPO_ROOT)


@pytest.fixture
def ladder(tmp_path, monkeypatch):
    """A variants/ folder of our own holding a copy of r1-torch, in place of the repository's."""
    folder = tmp_path / "variants"
    folder.mkdir()
    shutil.copytree(REPO / "variants" / "r1_torch", folder / "r1_torch", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(variants, "VARIANTS_DIR", folder)
    return folder


# ---- 1. square brackets are text --------------------------------------------------------------


def test_a_path_with_brackets_is_one_error_line(tmp_path):
    odd = tmp_path / "[" / "x]"
    r = invoke("check", "r1-torch", *SMALL, "--dataset", odd)
    assert r.exit_code == 2
    assert f"{odd} is not a flashinfer-bench dataset" in one_error_line(r)


def test_a_kernel_message_with_brackets_shows_in_the_table(tmp_path):
    body = f"def run({ARGS}, output):\n    raise RuntimeError('bad stride in w[/2] block at offs[mask]')\n"
    folder = write_variant(tmp_path / "brackets", body)
    r = invoke("check", folder, *SMALL, "--trials", "1", "--seq-len", "3")
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    assert "bad stride in w[/2] block at offs[mask]" in r.stdout
    assert "RUNTIME_ERROR" in r.stdout


def test_variants_new_shows_the_real_name_pattern():
    r = invoke("variants", "new", "MyTry", "--from", "r1-torch")
    assert r.exit_code == 2
    assert "'^[a-z0-9][a-z0-9_.-]*$'" in one_error_line(r)


# ---- 2. one broken variant never blocks the others ---------------------------------------------


@pytest.fixture
def broken_ladder(ladder):
    write_variant(ladder / "no_language", "def run(*a): pass\n")
    spec = ladder / "no_language" / "variant.toml"
    spec.write_text("\n".join(line for line in spec.read_text().splitlines() if not line.startswith("language")))
    write_variant(ladder / "v_syntax", "def run(:\n")
    return ladder


def test_variants_lists_a_broken_variant_as_a_row_with_its_error(broken_ladder):
    r = invoke("variants", "--json")
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"r1-torch", "v-syntax", "no-language"}
    assert rows["r1-torch"]["error"] is None and rows["v-syntax"]["error"] is None
    assert "field 'language'" in rows["no-language"]["error"]
    r = invoke("variants")
    assert r.exit_code == 0 and "field 'language'" in r.stdout and "r1-torch" in r.stdout


def test_work_on_other_variants_goes_on_beside_a_broken_one(broken_ladder, tmp_path):
    r = invoke("check", "r1-torch", *SMALL, "--trials", "1", "--seq-len", "3", "--json")
    assert r.exit_code == 0, r.output
    assert invoke("pack", "r1-torch", "-o", tmp_path / "s.json").exit_code == 0
    r = invoke("check", "no-language", *SMALL)
    assert r.exit_code == 2 and "field 'language'" in one_error_line(r)
    r = invoke("check", *SMALL, "--trials", "1", "--seq-len", "3", "--json")  # all: the broken one is named
    assert "left out no-language" in r.stderr
    assert {row["variant"] for row in json.loads(r.stdout)} == {"r1-torch", "v-syntax"}


def test_a_variant_that_does_not_build_is_its_verdict(broken_ladder):
    r = invoke("check", "r1-torch", "v-syntax", *SMALL, "--trials", "1", "--seq-len", "3", "--json")
    assert r.exit_code == 1, r.output
    rows = {row["variant"]: row for row in json.loads(r.stdout)}
    assert rows["r1-torch"]["status"] == "PASSED"
    assert rows["v-syntax"]["status"] == "COMPILE_ERROR" and "build failed" in rows["v-syntax"]["message"]
    r = invoke(
        "bench", "r1-torch", "v-syntax", *SMALL, "--seq-len", "3", "--warmup", "0", "--iterations", "1",
        "--trials", "1", "--results-dir", broken_ladder.parent / "results", "--json",
    )  # fmt: skip
    rows = {row["variant"]: row for row in json.loads(r.stdout)["records"]}
    assert r.exit_code == 1 and rows["r1-torch"]["status"] == "PASSED"
    assert rows["v-syntax"]["status"] == "COMPILE_ERROR"


# ---- 5. writes are atomic -----------------------------------------------------------------------


def test_pack_under_a_file_size_limit_leaves_the_old_file_whole(tmp_path):
    existing = tmp_path / "existing.json"
    existing.write_text('{"a good": "file"}\n')
    cmd = f"ulimit -f 4; exec {sys.executable} -m fibmoe pack r1-torch -o {existing}"
    r = subprocess.run(
        ["bash", "-c", cmd], capture_output=True, text=True, cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)}
    )
    assert r.returncode == 2, r.stderr
    assert "File too large" in r.stderr and "Traceback" not in r.stderr
    assert existing.read_text() == '{"a good": "file"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["existing.json"]  # no temporary file left


def test_a_failed_unpack_leaves_nothing_and_a_retry_works(tmp_path, monkeypatch):
    from fibmoe import files

    packed = tmp_path / "s.json"
    assert invoke("pack", "r1-torch", "-o", packed).exit_code == 0
    real_write, written = files.write_text, []

    def fail_on_the_second_file(path, text):
        if written:
            raise OSError(27, "File too large", str(path))
        written.append(real_write(path, text))

    monkeypatch.setattr(files, "write_text", fail_on_the_second_file)
    r = invoke("unpack", packed, tmp_path / "out")
    assert r.exit_code == 2 and "File too large" in one_error_line(r)
    assert written and not (tmp_path / "out").exists()
    monkeypatch.undo()
    r = invoke("unpack", packed, tmp_path / "out")
    assert r.exit_code == 0, r.output


# ---- 9. datasets cloned without Git LFS ---------------------------------------------------------


@pytest.fixture
def small_dataset(tmp_path):
    from fibmoe.geometry import SMALL as SMALL_GEOMETRY

    root = tmp_path / "dataset"
    name = SMALL_GEOMETRY.name
    for rel in (f"definitions/moe/{name}.json", f"workloads/moe/{name}.jsonl"):
        (root / rel).parent.mkdir(parents=True)
        shutil.copy(REPO / "workloads" / rel, root / rel)
    shutil.copytree(
        REPO / "workloads" / "blob" / "workloads" / "moe" / name, root / "blob" / "workloads" / "moe" / name
    )
    return root, name


def test_a_git_lfs_pointer_in_blob_names_the_file(small_dataset):
    root, name = small_dataset
    blobs = sorted((root / "blob").rglob("*.safetensors"))
    for blob in blobs:  # a clone without Git LFS: every blob is a pointer
        blob.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4096\n")
    r = invoke("check", "r1-torch", *SMALL, "--dataset", root, "--trials", "1")
    assert r.exit_code == 2
    line = one_error_line(r)
    assert any(str(blob) in line for blob in blobs) and "Git LFS pointer" in line and "git lfs pull" in line


def test_truncated_definition_and_workload_files_are_named(small_dataset):
    root, name = small_dataset
    definition, workloads = root / "definitions" / "moe" / f"{name}.json", root / "workloads" / "moe" / f"{name}.jsonl"
    good = workloads.read_text()
    workloads.write_text(good[: len(good) // 2])
    r = invoke("check", "r1-torch", *SMALL, "--dataset", root)
    assert r.exit_code == 2 and f"{workloads}, line " in one_error_line(r)
    workloads.write_text(good)
    definition.write_text(definition.read_text()[:100])
    r = invoke("check", "r1-torch", *SMALL, "--dataset", root)
    assert r.exit_code == 2 and f"{definition}: invalid record" in one_error_line(r)


# ---- 10. unpack keeps the spec and never makes a second variant of one name ----------------------


def test_unpack_keeps_rung_changes_and_shared_files(tmp_path):
    packed = tmp_path / "s.json"
    assert invoke("pack", "r1-torch", "-o", packed).exit_code == 0
    assert invoke("unpack", packed, tmp_path / "copy").exit_code == 0
    original, copy = variants.resolve(["r1-torch"])[0].spec, variants.load_variant(tmp_path / "copy").spec
    assert copy == original
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["main.py", "variant.toml"]  # shared stay shared


def test_unpack_into_variants_refuses_a_duplicate_name_or_renames(ladder, tmp_path):
    packed = tmp_path / "s.json"
    assert invoke("pack", "r1-torch", "-o", packed).exit_code == 0
    r = invoke("unpack", packed, ladder / "from_json")
    assert r.exit_code == 2
    assert "a variant named 'r1-torch' already exists" in one_error_line(r) and "--name" in r.output
    assert not (ladder / "from_json").exists()
    r = invoke("unpack", packed, ladder / "from_json", "--name", "r1-copy")
    assert r.exit_code == 0, r.output
    copy = variants.resolve(["r1-copy"])[0].spec
    assert copy.rung is None and copy.changes == variants.resolve(["r1-torch"])[0].spec.changes


def test_two_folders_with_one_name_are_reported_not_picked(ladder):
    shutil.copytree(ladder / "r1_torch", ladder / "r1_again")
    r = invoke("variants", "--json")
    rows = json.loads(r.stdout)
    assert [row["name"] for row in rows] == ["r1-torch", "r1-torch"]
    assert all("is used by 2 folders" in row["error"] for row in rows)
    r = invoke("check", "r1-torch", *SMALL)
    assert r.exit_code == 2 and "'r1-torch' is used by 2 folders" in one_error_line(r)


# ---- 12. smaller things -------------------------------------------------------------------------


def test_user_errors_exit_2_with_the_reason(tmp_path):
    r = invoke("pack", "r1-torch", "-o", tmp_path / "no" / "such" / "dir" / "s.json")
    assert r.exit_code == 2 and "No such file or directory" in one_error_line(r)
    r = invoke("check", "r1-torch", "--device", "tpu")
    assert r.exit_code == 2 and "--device 'tpu'" in one_error_line(r)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    packed = tmp_path / "s.json"
    assert invoke("pack", "r1-torch", "-o", packed).exit_code == 0
    r = invoke("unpack", packed, a_file)
    assert r.exit_code == 2 and "is not a folder" in one_error_line(r)


def test_flags_read_as_flags_in_help():
    for command in ("check", "bench", "eval", "variants"):
        r = invoke(command, "--help")
        line = next(line for line in r.stdout.splitlines() if "--json" in line)
        assert "<bool>" not in line, line


def test_check_prints_a_pass_count_per_variant():
    r = invoke("check", "r1-torch", *SMALL, "--trials", "1", "--seq-len", "3", "--seq-len", "7")
    assert r.exit_code == 0, r.output
    assert "r1-torch: 2/2 passed" in r.stdout


def test_pack_without_output_does_not_replace_solution_json_silently(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("pack", "r1-torch").exit_code == 0
    (tmp_path / "solution.json").write_text("mine\n")
    r = invoke("pack", "r1-torch")
    assert r.exit_code == 2 and "--force" in one_error_line(r)
    assert (tmp_path / "solution.json").read_text() == "mine\n"
    assert invoke("pack", "r1-torch", "--force").exit_code == 0
    assert json.loads((tmp_path / "solution.json").read_text())["name"] == "r1-torch"


def test_openevolve_evaluator_says_when_fibmoe_is_not_importable(tmp_path, monkeypatch, capsys):
    from test_eval import EXAMPLES, _example_evaluator

    python = tmp_path / "python"  # this interpreter without its site-packages: no fibmoe there
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    python.chmod(0o755)
    monkeypatch.setenv("FIBMOE_PYTHON", str(python))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    mod = _example_evaluator()
    monkeypatch.setattr(mod, "REPO", tmp_path)
    res = mod.run_fibmoe_eval(str(EXAMPLES / "initial_program.py"))
    assert res["combined_score"] == 0.0
    assert "fibmoe is not importable from" in res["error"] and "FIBMOE_PYTHON" in res["error"]
    assert "fibmoe is not importable" in capsys.readouterr().err


def test_only_the_interpreters_exp_overflow_is_silenced():
    from fibmoe.triton_env import silence_interpreter_exp_overflow

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_interpreter_exp_overflow()
        for module in ("triton.runtime.interpreter", "fibmoe.reference"):
            warnings.warn_explicit("overflow encountered in exp", RuntimeWarning, "x.py", 1, module=module)
        warnings.warn_explicit(
            "overflow encountered in multiply", RuntimeWarning, "x.py", 1, module="triton.runtime.interpreter"
        )
    shown = [(str(w.message), w.filename) for w in seen]
    assert shown == [("overflow encountered in exp", "x.py"), ("overflow encountered in multiply", "x.py")]


# ---- issue 9: no test forces the interpreter on a GPU machine -----------------------------------


def test_no_test_sets_triton_interpret_for_the_whole_process():
    """The interpreter is chosen in one place (fibmoe.triton_env, only without a GPU); a test that wants it
    elsewhere sets it for a subprocess (env=...) or with monkeypatch, never in os.environ at import."""
    import re

    forcing = re.compile(r"os\.environ(\[['\"]TRITON_INTERPRET['\"]\]\s*=|\.setdefault\(['\"]TRITON_INTERPRET)")
    offenders = [p.name for p in sorted((REPO / "tests").rglob("*.py")) if forcing.search(p.read_text())]
    assert offenders == []
