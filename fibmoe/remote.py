"""Remote GPUs through Modal: the same official run (`official.run`) inside a Modal container.

Everything Modal-specific is named once here; the app and the executor that calls it live in `modal_app`,
which imports this module (never the other way round) and is imported only when a run starts, since
modal is optional: the GPU machines we use do not have it. The remote function
receives Solution JSON strings and plain settings, and returns plain JSON: `remote_body` is its whole
body, run in-process by the tests.

Before anything runs, the Volume's layout is checked: the classic mistake is `modal volume put
flashinfer-trace DIR` without a trailing slash, which nests the dataset one level down, after which
flashinfer-bench silently sees an empty dataset.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

from .errors import FibmoeError

# ---- the one place for Modal's facts ------------------------------------------------------------

APP_NAME = "fibmoe"
VOLUME_NAME = "flashinfer-trace"
VOLUME_MOUNT = "/data"
DEFAULT_GPU = "B200"
TIMEOUT_S = 3600  # one container: 19 workloads x (reference timing + each solution's subprocess) + JIT
PYTHON_VERSION = "3.12"
# A CUDA toolkit image: nvcc and a C compiler for Triton's launcher, CUDA solutions and FlashInfer's JIT.
BASE_IMAGE = "nvidia/cuda:13.0.1-devel-ubuntu24.04"
# torch 2.11.0 is the newest torch that PyPI pairs with Triton 3.6 (torch 2.12.0 requires triton 3.7.0);
# flashinfer-bench brings flashinfer-python, which the FlashInfer baseline solution calls.
PIP_PACKAGES = (
    "torch==2.11.0",
    "triton==3.6.0",
    "flashinfer-bench==0.1.2",
    "pydantic>=2.7,<3",
    "safetensors>=0.5",
    "typer>=0.12",
    "rich>=13",
    "numpy",
)
IMAGE_ENV = {"FIB_DATASET_PATH": VOLUME_MOUNT, "FIB_CACHE_PATH": "/tmp/fib_cache", "PYTHONUNBUFFERED": "1"}
# Modal's GPU names (https://modal.com/docs/guide/gpu), optionally with ":count".
GPU_TYPES = (
    "T4",
    "L4",
    "A10",
    "A10G",
    "L40S",
    "A100",
    "A100-40GB",
    "A100-80GB",
    "RTX-PRO-6000",
    "H100",
    "H100!",
    "H200",
    "B200",
    "B200+",
)
PUT_COMMAND = f"modal volume put {VOLUME_NAME} <dataset folder>/ /"
NO_CREDENTIALS = (
    "no Modal credentials: run `modal token new` (it writes ~/.modal.toml) or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
)
LFS_MAGIC = b"version https://git-lfs"


def resolve_gpu(text: str) -> str:
    """A Modal GPU string from what the user typed: b200 -> B200, h100:2 -> H100:2."""
    name, _, count = text.strip().partition(":")
    upper = name.upper()
    if upper not in GPU_TYPES:
        raise FibmoeError(f"unknown GPU {text!r} for Modal (choose from {', '.join(GPU_TYPES)}, optionally with :N)")
    if count and (not count.isdigit() or int(count) < 1):
        raise FibmoeError(f"bad GPU count in {text!r}: use NAME:N with N >= 1")
    return f"{upper}:{int(count)}" if count else upper


# ---- the Volume's layout ------------------------------------------------------------------------


def check_volume_layout(root: Path, definition: str) -> None:
    """Fail, with the fix in the message, unless `root` holds `definition` in flashinfer-bench's layout."""
    root = Path(root)
    entries = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    if not entries:
        raise FibmoeError(
            f"the Volume {VOLUME_NAME} is empty (nothing at {root}): upload the dataset with `{PUT_COMMAND}` "
            "(mind the trailing slash)"
        )
    if not (root / "definitions").is_dir():
        nested = [root / e for e in entries if (root / e / "definitions").is_dir()]
        if nested:
            raise FibmoeError(
                f"the dataset sits one level down, in {nested[0]}: it was uploaded without a trailing slash "
                f"(`modal volume put {VOLUME_NAME} DIR` copies the folder itself). Fix: "
                f"`modal volume rm -r {VOLUME_NAME} /{nested[0].name}`, then `{PUT_COMMAND}`"
            )
        raise FibmoeError(
            f"the Volume {VOLUME_NAME} has no definitions/ folder at its root (it holds: {', '.join(entries[:8])}): "
            f"upload the dataset with `{PUT_COMMAND}`"
        )
    found = sorted((root / "definitions").rglob("*.json"))
    defs = [p for p in found if p.stem == definition]
    if not defs:
        have = ", ".join(p.stem for p in found[:5]) or "none"
        raise FibmoeError(
            f"the Volume {VOLUME_NAME} has no definition {definition} under definitions/ (it has: {have}): "
            f"upload the contest dataset with `{PUT_COMMAND}`"
        )
    text = defs[0].read_bytes()
    if not text.strip():
        raise FibmoeError(f"{defs[0]} on the Volume is empty: upload the dataset again with `{PUT_COMMAND}`")
    if text.startswith(LFS_MAGIC):
        raise FibmoeError(f"{defs[0]} is a Git LFS pointer: run `git lfs pull` in the dataset, then `{PUT_COMMAND}`")
    try:
        json.loads(text)
    except ValueError as e:
        raise FibmoeError(f"{defs[0]} on the Volume is not valid JSON ({e}): upload it again") from None
    wl_files = sorted((root / "workloads").rglob(f"{definition}.jsonl")) if (root / "workloads").is_dir() else []
    lines = [ln for p in wl_files for ln in p.read_text().splitlines() if ln.strip()]
    if not lines:
        raise FibmoeError(
            f"the Volume {VOLUME_NAME} has no workloads for {definition} (workloads/.../{definition}.jsonl is "
            f"missing or empty): upload the dataset with `{PUT_COMMAND}`"
        )
    for line in lines:
        _check_blobs(root, line)


def _check_blobs(root: Path, line: str) -> None:
    try:
        inputs = json.loads(line)["workload"]["inputs"]
    except (ValueError, KeyError, TypeError):
        return  # dataset.load reports malformed records itself
    for spec in inputs.values():
        if not isinstance(spec, dict) or spec.get("type") != "safetensors":
            continue
        path = Path(spec.get("path", ""))
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise FibmoeError(
                f"a workload's tensors are missing from the Volume ({path}): upload the whole dataset, blob/ "
                f"included, with `{PUT_COMMAND}`"
            )
        with open(path, "rb") as f:
            head = f.read(len(LFS_MAGIC))
        if head == LFS_MAGIC:
            raise FibmoeError(
                f"{path} is a Git LFS pointer, not the tensors: run `git lfs pull` in the dataset clone, "
                f"then `{PUT_COMMAND}`"
            )


# ---- the remote function's body --------------------------------------------------------------------


def remote_body(request: dict, benchmark_factory: Callable | None = None, capability=None) -> dict:
    """What runs in the container: layout check, dataset, official run. Plain JSON in, plain JSON out;
    a problem the user can fix comes back as {"error": message}."""
    try:
        return _remote_body(request, benchmark_factory, capability)
    except FibmoeError as e:
        return {"error": str(e)}


def _remote_body(request: dict, benchmark_factory, capability) -> dict:
    import torch
    from flashinfer_bench import Solution
    from pydantic import ValidationError

    from . import dataset, official, results
    from .roofline import hardware_for

    root = Path(request.get("dataset_root") or VOLUME_MOUNT)
    definition = request["definition"]
    check_volume_layout(root, definition)
    ds = dataset.load(definition, root)
    workloads = ds.select(request.get("workloads"), request.get("seq_lens"))
    try:
        solutions = [Solution.model_validate_json(s) for s in request["solutions"]]
    except ValidationError as e:
        raise FibmoeError(f"a solution sent to the container is invalid: {e.errors()[0]['msg']}") from None
    settings = official.OfficialSettings.from_dict(request.get("settings"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bandwidth, fp8_rate = request.get("bandwidth"), request.get("fp8_rate")
    hw = hardware_for(results.device_name(device), bandwidth, fp8_rate) if device == "cuda" else None
    extra = {
        "remote": {"gpu": request.get("gpu"), "app": APP_NAME, "volume": VOLUME_NAME, "mount": str(root)},
        **({"git_revision": request["git_revision"]} if request.get("git_revision") else {}),
    }
    out = official.run(
        ds,
        workloads,
        solutions,
        device,
        settings,
        hw,
        rungs=request.get("rungs") or {},
        baseline=request.get("baseline"),
        capability=capability,
        benchmark_factory=benchmark_factory,
        extra_provenance=extra,
    )
    out["official"]["dataset_workloads"] = len(ds.workloads)
    return json.loads(json.dumps(out))  # plain JSON, whatever numbers torch handed us


# ---- the local side ---------------------------------------------------------------------------------


def make_requests(
    solution_jsons: list[str],
    definition: str,
    gpu: str,
    settings,
    workload_uuids: Optional[list[str]] = None,
    all_uuids: Optional[list[str]] = None,
    parallel: bool = False,
    baseline: Optional[bool] = None,
    rungs: dict | None = None,
    bandwidth: float | None = None,
    fp8_rate: float | None = None,
    git_revision: str = "",
) -> list[dict]:
    """One request per container. `workload_uuids` None means all the Volume's workloads; `--parallel`
    gives each solution its own container, or, for one solution, each workload (from `all_uuids`)."""
    base = {
        "definition": definition,
        "gpu": gpu,
        "settings": asdict(settings),
        "workloads": workload_uuids,
        "baseline": baseline,
        "dataset_root": VOLUME_MOUNT,
        "rungs": rungs or {},
        "bandwidth": bandwidth,
        "fp8_rate": fp8_rate,
        "git_revision": git_revision,
    }
    if not parallel:
        return [{**base, "solutions": list(solution_jsons)}]
    if len(solution_jsons) > 1:
        return [{**base, "solutions": [s]} for s in solution_jsons]
    uuids = workload_uuids or all_uuids
    if not uuids:
        raise FibmoeError("--parallel with one solution fans workloads out, but no workload list is known")
    return [{**base, "solutions": list(solution_jsons), "workloads": [u]} for u in uuids]


def merge(responses: list[dict]) -> dict:
    """One payload from the containers' payloads: records in workload order, summary and score redone."""
    from .official import official_score
    from .runner import add_previous_rung_speedups

    errors = [r["error"] for r in responses if "error" in r]
    if errors:
        raise FibmoeError(f"remote run: {errors[0]}")
    first = responses[0]
    if len(responses) == 1:
        return first
    records, seen_baseline = [], set()
    for rec in (rec for r in responses for rec in r["records"]):
        if rec.get("baseline"):  # each container ran it beside its own; our records already hold its time
            if rec["uuid"] in seen_baseline:
                continue
            seen_baseline.add(rec["uuid"])
        records.append(rec)
    uuid_order = {u: i for i, u in enumerate(dict.fromkeys(rec["uuid"] for rec in records))}
    name_order = {n: i for i, n in enumerate(dict.fromkeys(rec["variant"] for rec in records))}
    records.sort(key=lambda rec: (uuid_order[rec["uuid"]], bool(rec.get("baseline")), name_order[rec["variant"]]))
    add_previous_rung_speedups(records)
    total = first.get("official", {}).get("dataset_workloads")
    baseline = dict(first["official"]["baseline"])
    baseline["ran"] = any(r["official"]["baseline"]["ran"] for r in responses)
    return {
        **first,
        "provenance": {**first["provenance"], "containers": len(responses)},
        "summary": official_score(records, total),
        "official": {**first["official"], "baseline": baseline},
        "records": records,
    }


def credentials_problem(get: Callable | None = None) -> str:
    """'' when Modal has credentials (environment or ~/.modal.toml), else the line that says what to do."""
    if get is None:
        from modal.config import config

        get = config.get
    try:
        if get("token_id") and get("token_secret"):
            return ""
    except Exception:  # noqa: BLE001 - an unreadable config is the same as none
        return NO_CREDENTIALS
    return NO_CREDENTIALS


def import_modal():
    try:
        import modal
    except ImportError:
        raise FibmoeError(
            "--remote needs the modal package, which is not installed here: pip install 'modal>=1.0'"
        ) from None
    return modal


def modal_error(modal, e: Exception) -> FibmoeError | None:
    """Modal's own failures as one line; None for anything else (a bug, or the remote body's exception)."""
    exc = modal.exception
    if isinstance(e, exc.AuthError):
        return FibmoeError(f"{NO_CREDENTIALS} (Modal said: {e})")
    if isinstance(e, exc.NotFoundError):
        return FibmoeError(
            f"Modal: {e}. Create the Volume with `modal volume create {VOLUME_NAME}` and upload the dataset "
            f"with `{PUT_COMMAND}`"
        )
    if isinstance(e, (exc.ConnectionError, ConnectionError, OSError, TimeoutError)):
        return FibmoeError(f"cannot reach Modal ({type(e).__name__}: {e}); check the network")
    if isinstance(e, exc.Error) or type(e).__module__.startswith("grpclib"):
        return FibmoeError(f"Modal: {type(e).__name__}: {e}")
    return None


def run_remote(solutions: list, definition: str, gpu: str, settings, executor: Callable, **options) -> dict:
    """Send packed Solutions to Modal, run them officially there, and return the merged payload.
    `executor(gpu, requests)` runs the requests (`modal_app.execute`; tests pass a stand-in);
    `options` are `make_requests`'s (workload_uuids, all_uuids, parallel, baseline, rungs, bandwidth, fp8_rate)."""
    from . import results, variants

    gpu = resolve_gpu(gpu)
    solution_jsons = [variants.solution_json(s) for s in solutions]
    requests = make_requests(solution_jsons, definition, gpu, settings, git_revision=results.git_revision(), **options)
    responses = executor(gpu, requests)
    return merge(list(responses))
