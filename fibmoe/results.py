"""Results on disk: provenance of a run, files under results/<gpu>/, and the last known status."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import subprocess
from dataclasses import asdict
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "results"


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


def provenance(device: str, settings=None, extra: dict | None = None) -> dict:
    import triton

    try:
        import flashinfer_bench

        fib_version = flashinfer_bench.__version__
    except Exception:  # noqa: BLE001 - provenance must not fail the run
        fib_version = "unavailable"
    return {
        "device": device,
        "device_name": device_name(device),
        "timer": "cuda-events span (flashinfer_bench do_bench)" if device.startswith("cuda") else "CPU wall clock",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "flashinfer_bench": fib_version,
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


def write_results(
    kind: str, device: str, payload: dict, results_dir: Path = RESULTS_DIR, slug: str | None = None
) -> Path:
    """results/<gpu>/<kind>-<UTC stamp>.json; `slug` names the GPU folder when the GPU was not local."""
    folder = results_dir / (slug or results_slug(device))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{stamp()}.json"
    path.write_text(json.dumps({"kind": kind, **payload}, indent=2) + "\n")
    return path


def last_status(variant: str, results_dir: Path = RESULTS_DIR) -> str:
    """The newest recorded outcome of a variant, e.g. 'PASSED 19/19 (bench, h100, 2026-11-21)'."""
    newest = None
    for path in results_dir.glob("*/*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rows = [r for r in data.get("records", []) if isinstance(r, dict) and r.get("variant") == variant]
        date = data.get("provenance", {}).get("date", "")
        if rows and (newest is None or date > newest[0]):
            newest = (date, data.get("kind", "?"), path.parent.name, rows)
    if newest is None:
        return ""
    date, kind, gpu, rows = newest
    passed = sum(r.get("status") == "PASSED" for r in rows)
    verdict = "PASSED" if passed == len(rows) else "FAILED"
    return f"{verdict} {passed}/{len(rows)} ({kind}, {gpu}, {date[:10]})"
