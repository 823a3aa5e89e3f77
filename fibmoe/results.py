"""Results on disk: where they go, provenance, strict JSON, flashinfer-bench Trace records, and the
strongest evidence a variant has.

Where: evidence (`--save`) goes into the checkout's `results/<gpu>/`; `--results-dir DIR` into
`DIR/<gpu>/`; anything else (an ad-hoc `bench`) into a per-user data directory
(`$FIBMOE_DATA_DIR`, else `$XDG_DATA_HOME/fibmoe`, else `~/.local/share/fibmoe`), never into the
repository or the current folder unasked. Each run is `<kind>-<UTC stamp>.json` (our summary with
provenance) beside `<kind>-<UTC stamp>.traces.jsonl` (one flashinfer-bench `Trace` per timed record,
as its own `Benchmark` writes them), both rewritten atomically as each workload ends.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
from dataclasses import asdict
from pathlib import Path

import torch

from . import REPO_ROOT, files

EVIDENCE_DIR = REPO_ROOT / "results"


def user_data_dir() -> Path:
    if os.environ.get("FIBMOE_DATA_DIR"):
        return Path(os.environ["FIBMOE_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "fibmoe"


def destination(save: bool, results_dir: Path | None) -> Path:
    """The folder that holds results/<gpu>/ for this run (see the module's docstring)."""
    if results_dir is not None:
        return Path(results_dir)
    return EVIDENCE_DIR if save else user_data_dir() / "results"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def results_slug(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    return slug_of(device_name(device))


def slug_of(name: str) -> str:
    """The results/ folder for a GPU by name: 'NVIDIA B200' -> 'b200' (also for a GPU seen remotely)."""
    known = re.search(r"(B200|H200|H100|A100|L40S|GB200)", name, re.IGNORECASE)
    return (known.group(1) if known else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")).lower()


def package_version(name: str) -> str:
    """The installed distribution's version (flashinfer-bench's own __version__ says 0.0.0.dev0)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def provenance(device: str, settings=None, extra: dict | None = None) -> dict:
    return {
        "device": device,
        "device_name": device_name(device),
        "timer": "cuda-events span (flashinfer_bench do_bench)" if device.startswith("cuda") else "CPU wall clock",
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "flashinfer_bench": package_version("flashinfer-bench"),
        "python": platform.python_version(),
        "git_revision": git_revision(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **({"settings": asdict(settings)} if settings else {}),
        **(extra or {}),
    }


def git_revision() -> str:
    """The checkout's revision; a copy without .git (the device machine's) passes it in FIBMOE_GIT_REVISION."""
    if os.environ.get("FIBMOE_GIT_REVISION"):
        return os.environ["FIBMOE_GIT_REVISION"]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def stamp() -> str:
    """The UTC time stamp in result file names."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# ---- strict JSON ---------------------------------------------------------------------------------------


def strict(obj):
    """A copy that is strict JSON: NaN and inf become null, and the dict that held one says why in its
    `message` field (e.g. a NaN-poisoned output has no finite error figures)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (list, tuple)):
        return [strict(x) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out = {k: strict(v) for k, v in obj.items()}
    nulled = [f"{k} is null (it was {v})" for k, v in obj.items() if isinstance(v, float) and not math.isfinite(v)]
    if nulled:
        out["message"] = "; ".join(x for x in [obj.get("message") or "", *nulled] if x)
    return out


def dumps(obj) -> str:
    return json.dumps(strict(obj), indent=2, allow_nan=False)


def write_atomically(path: Path, text: str) -> None:
    """Create the folder, then write through `files.write_text` (a temporary name beside it, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text(path, text)


# ---- result files ----------------------------------------------------------------------------------------


def results_path(kind: str, device: str, results_dir: Path, slug: str | None = None) -> Path:
    """results_dir/<gpu>/<kind>-<UTC stamp>.json; `slug` names the GPU folder when the GPU was not local."""
    return Path(results_dir) / (slug or results_slug(device)) / f"{kind}-{stamp()}.json"


def write_results(
    kind: str, device: str, payload: dict, results_dir: Path, slug: str | None = None, path: Path | None = None
) -> Path:
    """Write (or rewrite, given `path`) one run's JSON, and its Trace records when it has any."""
    path = path or results_path(kind, device, results_dir, slug)
    write_atomically(path, dumps({"kind": kind, **payload}) + "\n")
    return path


def traces_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".json") + ".traces.jsonl")


def write_traces(path: Path, traces: list) -> Path:
    """flashinfer-bench Trace records, one JSON object a line, as its `TraceSet.add_traces` writes them."""
    target = traces_path(path)
    write_atomically(target, "".join(t.model_dump_json() + "\n" for t in traces))
    return target


def traces_of(records: list[dict], ds, device: str) -> list:
    """A flashinfer-bench `Trace` for every timed or failed record (a skipped one has no status there)."""
    from flashinfer_bench.data import Correctness, Evaluation, EvaluationStatus, Performance, Trace
    from flashinfer_bench.utils import env_snapshot

    env = env_snapshot(device)
    workloads = {w.workload.uuid: w.workload for w in ds.workloads}
    now = dt.datetime.now().isoformat()
    out = []
    for r in records:
        status = EvaluationStatus.__members__.get(r["status"])
        if status is None or (status == EvaluationStatus.PASSED and not r.get("latency_ms")):
            continue  # skipped, or judged but not timed (check): nothing the library can hold
        correctness = performance = None
        if status in (EvaluationStatus.PASSED, EvaluationStatus.INCORRECT_NUMERICAL):
            nan = float("nan")
            correctness = Correctness(
                max_absolute_error=_or(r.get("max_abs_error"), nan),
                max_relative_error=_or(r.get("max_rel_error"), nan),
                extra={k: r.get(k) for k in ("matched_ratio", "rel_l2_error", "routing_agreement")},
            )
        if status == EvaluationStatus.PASSED:
            performance = Performance(
                latency_ms=r["latency_ms"],
                reference_latency_ms=r.get("reference_ms") or 0.0,
                speedup_factor=r.get("speedup_vs_reference") or 0.0,
            )
        log = "\n".join(x for x in (r.get("message"), r.get("error")) if x)
        evaluation = Evaluation(
            status=status, environment=env, timestamp=now, log=log, correctness=correctness, performance=performance
        )
        out.append(
            Trace(
                definition=ds.definition.name,
                workload=workloads[r["uuid"]],
                solution=r["variant"],
                evaluation=evaluation,
            )
        )
    return out


def _or(x, default):
    return default if x is None else x


# ---- evidence ------------------------------------------------------------------------------------------


def evidence(variant: str, folders: list[Path] | None = None) -> dict | None:
    """The strongest recorded outcome of a variant: a GPU over a CPU, a complete run over one cut short,
    more workloads over fewer, then the newest. {"status": 'PASSED 19/19 (bench, h100, 2026-11-21)',
    "source": the file}, or None."""
    best = None
    for folder in folders if folders is not None else [EVIDENCE_DIR, user_data_dir() / "results"]:
        for path in Path(folder).glob("*/*.json"):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            rows = [r for r in data.get("records", []) if isinstance(r, dict) and r.get("variant") == variant]
            if not rows:
                continue
            date = data.get("provenance", {}).get("date", "")
            gpu = path.parent.name
            key = (gpu != "cpu", data.get("complete", True), len({r.get("uuid") for r in rows}), date)
            if best is None or key > best[0]:
                best = (key, data.get("kind", "?"), gpu, date, rows, path)
    if best is None:
        return None
    _, kind, gpu, date, rows, path = best
    passed = sum(r.get("status") == "PASSED" for r in rows)
    verdict = "PASSED" if passed == len(rows) else "FAILED"
    partial = "" if best[0][1] else ", cut short"
    return {"status": f"{verdict} {passed}/{len(rows)} ({kind}, {gpu}, {date[:10]}{partial})", "source": str(path)}
