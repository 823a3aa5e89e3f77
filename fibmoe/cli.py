"""The `fibmoe` command line: a thin layer over the library (tests and tools call the library)."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import FibmoeError

app = typer.Typer(
    help="Write, prove and ship FP8 MoE kernels for the FlashInfer MLSys 2026 contest (Track A).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
variants_app = typer.Typer(help="The ladder of variants.", invoke_without_command=True)
app.add_typer(variants_app, name="variants")

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)  # an error stays one line, however long


def guarded(fn):
    """One clear error line and exit status 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FibmoeError as e:
            err.print(f"[red]error:[/red] {e}", markup=True, highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # a bug of ours: still one line, the traceback on request
            if os.environ.get("FIBMOE_DEBUG"):
                raise
            err.print(f"[red]internal error:[/red] {type(e).__name__}: {e} (FIBMOE_DEBUG=1 shows the traceback)")
            raise typer.Exit(3) from None

    return wrapper


@app.callback()
def main():
    """Without a GPU, Triton kernels run in Triton's CPU interpreter (set before triton is imported)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


# ---- shared options --------------------------------------------------------------------------

DatasetOpt = typer.Option(None, "--dataset", help="dataset folder (default: $FIB_DATASET_PATH, else workloads/)")
DefinitionOpt = typer.Option("auto", "--definition", "-d", help="contest, small, or auto (contest on a GPU)")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N")
WorkloadOpt = typer.Option(None, "--workload", "-w", help="uuid prefix (repeatable)")
SeqLenOpt = typer.Option(None, "--seq-len", "-t", help="only workloads with this T (repeatable)")
StyleOpt = typer.Option("contest", "--style", help="contest (as the harness draws inputs) or quantized")
JsonOpt = typer.Option(False, "--json", help="print JSON instead of a table")
ResultsDirOpt = typer.Option(Path("results"), "--results-dir", help="where results/<gpu>/ goes")


def _setup(dataset, definition, device, workload, seq_len):
    from . import check
    from . import dataset as dataset_mod

    device = check.resolve_device(device)
    if definition == "auto":
        definition = "contest" if device.startswith("cuda") else "small"
    geometry = dataset_mod.resolve_definition(definition)
    ds = dataset_mod.load(geometry.name, dataset)
    return device, ds, ds.select(workload, seq_len)


def _fmt(x, spec=".3g", none="-"):
    return none if x is None else format(x, spec)


def _status(s: str) -> str:
    color = {"PASSED": "green", "SKIPPED": "yellow"}.get(s, "red")
    return f"[{color}]{s}[/{color}]"


# ---- variants --------------------------------------------------------------------------------


@variants_app.callback()
@guarded
def variants_list(ctx: typer.Context, as_json: bool = JsonOpt):
    """List the ladder: rung, name, language, what it changes, last known status."""
    if ctx.invoked_subcommand:
        return
    from . import results, variants

    rows = []
    for v in variants.discover():
        rows.append(
            {
                "name": v.name,
                "rung": v.spec.rung,
                "language": v.spec.language,
                "changes": v.spec.changes,
                "path": str(v.path),
                "last_status": results.last_status(v.name),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="fibmoe ladder")
    for col in ("rung", "name", "language", "what it changes", "last known status"):
        table.add_column(col)
    for r in rows:
        table.add_row(_fmt(r["rung"], "d"), r["name"], r["language"], r["changes"], r["last_status"] or "never run")
    out.print(table)


@variants_app.command("new")
@guarded
def variants_new(
    name: str = typer.Argument(..., help="name of the new variant (folder: name with - as _)"),
    source: str = typer.Option(..., "--from", help="variant to copy"),
):
    """Scaffold a new variant by copying an existing one."""
    from . import variants

    v = variants.scaffold(name, variants.resolve([source])[0])
    out.print(f"created {v.path} from {source}; give it a rung in {v.path / variants.SPEC_FILE}")


# ---- check -----------------------------------------------------------------------------------


@app.command()
@guarded
def check(
    names: Optional[List[str]] = typer.Argument(None, help="variants (default: all)"),
    dataset: Optional[Path] = DatasetOpt,
    definition: str = DefinitionOpt,
    device: str = DeviceOpt,
    workload: Optional[List[str]] = WorkloadOpt,
    seq_len: Optional[List[int]] = SeqLenOpt,
    trials: int = typer.Option(3, "--trials", min=1, help="fresh random inputs per workload"),
    style: str = StyleOpt,
    save: bool = typer.Option(False, "--save", help="also write the results under results/<gpu>/"),
    results_dir: Path = ResultsDirOpt,
    as_json: bool = JsonOpt,
):
    """Diff-test variants against the reference with the official rule; exit 0 only if all passed."""
    from . import check as check_mod
    from . import results, variants

    device, ds, workloads = _setup(dataset, definition, device, workload, seq_len)
    chosen = variants.resolve(names or [])
    cases = check_mod.run_check(chosen, ds, workloads, device, trials, style, _progress(as_json))
    records = [c.to_dict() for c in cases]
    if save:
        path = results.write_results(
            "check",
            device,
            {"provenance": results.provenance(device), "definition": ds.definition.name, "records": records},
            results_dir,
        )
        err.print(f"wrote {path}")
    if as_json:
        print(json.dumps(records, indent=2))
    else:
        table = Table(title=f"check: {ds.definition.name} on {device}, {trials} trial(s), {style} inputs")
        for col in ("variant", "T", "workload", "status", "max abs err", "rel L2 err", "matched", "routing", "note"):
            table.add_column(col)
        for r in records:
            table.add_row(
                r["variant"],
                str(r["seq_len"]),
                r["uuid"][:8],
                _status(r["status"]),
                _fmt(r["max_abs_error"]),
                _fmt(r["rel_l2_error"], ".2e"),
                _fmt(r["matched_ratio"], ".4f"),
                _fmt(r["routing_agreement"], ".3f"),
                r["message"][:60],
            )
        out.print(table)
        skipped = {r["variant"]: r["message"] for r in records if r["status"] == "SKIPPED"}
        for name, why in skipped.items():
            out.print(f"skipped {name}: {why}")
    if not check_mod.all_passed(cases):
        raise typer.Exit(1)


# ---- bench -----------------------------------------------------------------------------------


@app.command()
@guarded
def bench(
    names: Optional[List[str]] = typer.Argument(None, help="variants (default: all)"),
    dataset: Optional[Path] = DatasetOpt,
    definition: str = DefinitionOpt,
    device: str = DeviceOpt,
    workload: Optional[List[str]] = WorkloadOpt,
    seq_len: Optional[List[int]] = SeqLenOpt,
    warmup: int = typer.Option(10, "--warmup", min=0),
    iterations: int = typer.Option(50, "--iterations", min=1),
    trials: int = typer.Option(3, "--trials", min=1),
    style: str = StyleOpt,
    bandwidth: Optional[float] = typer.Option(None, "--bandwidth", help="override GPU bandwidth, TB/s"),
    fp8_rate: Optional[float] = typer.Option(None, "--fp8-rate", help="override dense FP8 rate, TFLOP/s"),
    results_dir: Path = ResultsDirOpt,
    as_json: bool = JsonOpt,
    official: bool = typer.Option(
        False, "--official", help="run flashinfer-bench's own Benchmark with the contest's MoE settings (GPU)"
    ),
    remote: Optional[str] = typer.Option(
        None, "--remote", help="run the official path on Modal: b200, h100, h200 or any Modal GPU string"
    ),
    parallel: bool = typer.Option(
        False, "--parallel", help="with --remote: one container per variant (per workload for one variant)"
    ),
    baseline: Optional[bool] = typer.Option(
        None, "--baseline/--no-baseline", help="run the FlashInfer baseline beside (default: where it can run)"
    ),
):
    """Time variants and the reference with the official protocol, beside the roofline floor."""
    if official or remote:
        return _bench_official(**locals())  # only the parameters are bound here
    from . import bench as bench_mod
    from . import results, variants

    if parallel or baseline is not None:
        raise FibmoeError("--parallel and --baseline go with --official or --remote")
    device, ds, workloads = _setup(dataset, definition, device, workload, seq_len)
    chosen = variants.resolve(names or [])
    settings = bench_mod.Settings(warmup=warmup, iterations=iterations, trials=trials, style=style)
    hw = _hardware(device, bandwidth, fp8_rate)
    records = bench_mod.run_bench(chosen, ds, workloads, device, settings, hw, _progress(as_json))
    payload = {
        "provenance": results.provenance(device, settings),
        "definition": ds.definition.name,
        "hardware": hw.__dict__ if hw else None,
        "summary": bench_mod.summary(records),
        "records": records,
    }
    path = results.write_results("bench", device, payload, results_dir)
    if as_json:
        print(json.dumps(payload, indent=2))
    else:
        _print_bench(payload, device)
    err.print(f"wrote {path}")
    if any(r["status"] not in ("PASSED", "SKIPPED") for r in records):
        raise typer.Exit(1)


def _print_bench(payload: dict, device: str) -> None:
    timer = payload["provenance"]["timer"]
    table = Table(title=f"bench: {payload['definition']} on {payload['provenance']['device_name']} ({timer})")
    for col in (
        "variant",
        "T",
        "workload",
        "status",
        "latency ms",
        "ref ms",
        "x ref",
        "x prev",
        "floor ms",
        "of floor",
    ):
        table.add_column(col)
    for r in payload["records"]:
        table.add_row(
            r["variant"],
            str(r["seq_len"]),
            r["uuid"][:8],
            _status(r["status"]),
            _fmt(r["latency_ms"], ".4f"),
            _fmt(r["reference_ms"], ".3f"),
            _fmt(r["speedup_vs_reference"], ".1f"),
            _fmt(r["speedup_vs_previous"], ".2f"),
            _fmt(r["floor_ms"], ".4f"),
            _fmt(r["fraction_of_floor"], ".0%"),
        )
    out.print(table)
    for name, s in payload["summary"].items():
        out.print(
            f"{name}: {s['passed']}/{s['workloads']} passed, mean speedup over the reference "
            f"{s['mean_speedup_vs_reference']:.2f}x, mean fraction of floor {_fmt(s['mean_fraction_of_floor'], '.0%')}"
        )
    if not device.startswith("cuda"):
        out.print(
            "[yellow]CPU wall-clock figures: not comparable with GPU timings; no roofline floor for a CPU[/yellow]"
        )


def _progress(as_json: bool):
    return None if as_json else (lambda msg: err.print(f"  {msg}", style="dim", highlight=False))


def _hardware(device: str, bandwidth: Optional[float] = None, fp8_rate: Optional[float] = None):
    from . import results
    from .roofline import hardware_for

    return hardware_for(
        results.device_name(device) if device.startswith("cuda") else "cpu",
        bandwidth * 1e12 if bandwidth else None,
        fp8_rate * 1e12 if fp8_rate else None,
    )


def _bench_official(
    names, dataset, definition, device, workload, seq_len, warmup, iterations, trials, style, bandwidth, fp8_rate,
    results_dir, as_json, remote, parallel, baseline, **_,
):  # fmt: skip
    """`bench --official` (flashinfer-bench's Benchmark here) and `bench --remote GPU` (the same on Modal)."""
    from . import dataset as dataset_mod
    from . import official, results, variants
    from . import remote as remote_mod

    if style != "contest":
        raise FibmoeError("--style is for fibmoe's own bench: the official run draws the contest's inputs itself")
    if parallel and not remote:
        raise FibmoeError("--parallel fans out over Modal containers: use it with --remote")
    settings = official.OfficialSettings(warmup=warmup, iterations=iterations, trials=trials)
    chosen = variants.resolve(names or [])
    rungs = {v.name: v.spec.rung for v in chosen}
    slug = None
    if remote:
        gpu = remote_mod.resolve_gpu(remote)
        geometry = dataset_mod.resolve_definition("contest" if definition == "auto" else definition)
        ds = dataset_mod.load(geometry.name, dataset)  # the local copy: uuids to select and fan out
        selected = ds.select(workload, seq_len)
        solutions = [variants.pack(v, geometry.name) for v in chosen]
        payload = remote_mod.run_remote(
            solutions,
            geometry.name,
            gpu,
            settings,
            workload_uuids=[w.workload.uuid for w in selected] if (workload or seq_len) else None,
            all_uuids=[w.workload.uuid for w in selected],
            parallel=parallel,
            baseline=baseline,
            rungs=rungs,
            bandwidth=bandwidth,
            fp8_rate=fp8_rate,
        )
        device = "cuda"
        slug = results.slug_of(payload["provenance"].get("device_name", gpu))
    else:
        device, ds, workloads = _setup(dataset, definition, device, workload, seq_len)
        if not device.startswith("cuda"):
            raise FibmoeError(
                "--official needs a CUDA GPU (flashinfer-bench's Benchmark refuses to start without one): "
                "use --remote b200, or plain `fibmoe bench` here"
            )
        solutions = [variants.pack(v, ds.definition.name) for v in chosen]
        payload = official.run(
            ds,
            workloads,
            solutions,
            device,
            settings,
            _hardware(device, bandwidth, fp8_rate),
            rungs=rungs,
            baseline=baseline,
            progress=_progress(as_json),
        )
    path = results.write_results("official", device, payload, results_dir, slug=slug)
    if as_json:
        print(json.dumps(payload, indent=2))
    else:
        _print_bench(payload, device)
        _print_official(payload)
    err.print(f"wrote {path}")
    if official.any_failed(payload["records"]):
        raise typer.Exit(1)


def _print_official(payload: dict) -> None:
    for r in payload["records"]:
        if r["status"] != "PASSED":
            out.print(f"{r['variant']} T={r['seq_len']} {r['uuid']}: {r['status']}: {r['message']}", highlight=False)
    info = payload["official"]
    if not info["official_settings"]:
        out.print(f"[yellow]not the official settings: {info['settings']}[/yellow]")
    for name, s in payload["summary"].items():
        score = s["score_vs_baseline"]
        shown = f"{score:.3f}" if score is not None else "unavailable"
        note = f" ({s['score_note']})" if s["score_note"] else ""
        out.print(
            f"{name}: official score vs FlashInfer baseline {shown}{note}; "
            f"mean speedup over the reference {s['mean_speedup_vs_reference']:.2f}x",
            highlight=False,
        )


# ---- eval / profile / sanitize ----------------------------------------------------------------

TargetArg = typer.Argument(..., help="a kernel file (.py), a Solution JSON, a variant name or folder")
EntryOpt = typer.Option("run", "--entry", help="entry function of a kernel file")


@app.command("eval")
@guarded
def eval_(
    target: str = TargetArg,
    dataset: Optional[Path] = DatasetOpt,
    definition: str = DefinitionOpt,
    device: str = DeviceOpt,
    workload: Optional[List[str]] = WorkloadOpt,
    seq_len: Optional[List[int]] = SeqLenOpt,
    quick: bool = typer.Option(False, "--quick", help="5 workloads, 1 trial, 3 warm-up and 10 timed calls"),
    ncu: bool = typer.Option(False, "--ncu", help="add Nsight Compute figures for the hottest kernel"),
    official: bool = typer.Option(False, "--official", help="time with flashinfer-bench's Benchmark (GPU)"),
    entry: str = EntryOpt,
    save: bool = typer.Option(False, "--save", help="also write the result under results/<gpu>/"),
    results_dir: Path = ResultsDirOpt,
    as_json: bool = JsonOpt,
):
    """Score one candidate for a search loop or an agent: pack, check, bench; one JSON object with --json."""
    import tempfile

    from . import evaluate, nvtools, results

    device, ds, workloads = _setup(dataset, definition, device, workload, seq_len)
    if quick and not (workload or seq_len):
        workloads = evaluate.quick_workloads(workloads)
    if ncu:
        nvtools.find_tool("ncu", nvtools.NCU_HINT)
        nvtools.require_cuda(device, "--ncu")
    with tempfile.TemporaryDirectory(prefix="fibmoe-eval-") as tmp:
        v = evaluate.load_candidate(target, Path(tmp), entry)
        res = evaluate.evaluate(
            v, ds, workloads, device, quick, _hardware(device), official, progress=_progress(as_json), source=target
        )
        if ncu:
            if res["all_passed"]:
                evaluate.add_ncu(res, v, ds, workloads, device)
            else:
                res["ncu"] = {"error": "not profiled: the candidate did not pass"}
    if save:
        path = results.write_results("eval", device, {"provenance": results.provenance(device), **res}, results_dir)
        err.print(f"wrote {path}")
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        _print_eval(res)
    if not res["all_passed"]:
        raise typer.Exit(1)


def _print_eval(res: dict) -> None:
    table = Table(title=f"eval: {res['candidate']} ({res['language']}) on {res['device']}, {res['mode']}")
    for col in ("T", "workload", "status", "latency ms", "x ref", "of floor", "rel L2 err", "matched", "note"):
        table.add_column(col)
    for r in res["per_workload"]:
        table.add_row(
            str(r["seq_len"]),
            r["uuid"][:8],
            _status(r["status"]),
            _fmt(r["latency_ms"], ".4f"),
            _fmt(r["speedup_vs_reference"], ".1f"),
            _fmt(r["fraction_of_floor"], ".0%"),
            _fmt(r["rel_l2_error"], ".2e"),
            _fmt(r["matched_ratio"], ".4f"),
            r["message"][:50],
        )
    out.print(table)
    out.print(f"combined_score {res['combined_score']:.4f} ({res['passed']}/{res['workloads']} passed)")
    if res["error"]:
        out.print(f"[red]{res['stage']} failed:[/red] {res['error']}", highlight=False)
    if "ncu" in res:
        n = res["ncu"]
        out.print(
            f"ncu: {n['error']}" if "error" in n else f"ncu ({n['kernel'][:60]}): {n['reading']}", highlight=False
        )


@app.command()
@guarded
def profile(
    name: str = TargetArg,
    workload: str = typer.Option(..., "--workload", "-w", help="uuid prefix of the workload to profile"),
    dataset: Optional[Path] = DatasetOpt,
    definition: str = DefinitionOpt,
    device: str = DeviceOpt,
    section_set: str = typer.Option("full", "--set", help="Nsight Compute section set (full, detailed, basic)"),
    timeout: int = typer.Option(900, "--timeout", min=1, help="seconds"),
    entry: str = EntryOpt,
    results_dir: Path = ResultsDirOpt,
    as_json: bool = JsonOpt,
):
    """Nsight Compute on one call of a variant; the full report is kept under results/<gpu>/."""
    import tempfile

    from . import evaluate, nvtools

    nvtools.find_tool("ncu", nvtools.NCU_HINT)
    device, ds, workloads = _setup(dataset, definition, device, [workload], None)
    with tempfile.TemporaryDirectory(prefix="fibmoe-profile-") as tmp:
        v = evaluate.load_candidate(name, Path(tmp), entry)
        payload, path = nvtools.profile_variant(v, ds, workloads[0], device, results_dir, section_set, timeout)
    if as_json:
        print(json.dumps(payload, indent=2))
    else:
        n = payload["ncu"]
        table = Table(
            title=f"profile: {v.name} T={payload['seq_len']} {payload['uuid'][:8]}, {n['kernels']} kernels, "
            f"{n['gpu_time_us']:.1f} us on the GPU"
        )
        for col in ("kernel", "us", "SM %", "DRAM %", "occupancy %"):
            table.add_column(col)
        for k in n["top"]:
            table.add_row(
                k["name"][:70],
                _fmt(k["duration_us"], ".1f"),
                _fmt(k["sm_throughput_pct"], ".0f"),
                _fmt(k["dram_throughput_pct"], ".0f"),
                _fmt(k["achieved_occupancy_pct"], ".0f"),
            )
        out.print(table)
        out.print(f"hottest kernel: {n['reading']}", highlight=False)
        out.print(f"full report: {n['report']}", highlight=False)
    err.print(f"wrote {path}")


@app.command()
@guarded
def sanitize(
    name: str = TargetArg,
    workload: Optional[str] = typer.Option(None, "--workload", "-w", help="uuid prefix (default: the smallest T)"),
    tool: Optional[List[str]] = typer.Option(
        None, "--tool", help="memcheck, racecheck, initcheck or synccheck (repeatable; default: all four)"
    ),
    dataset: Optional[Path] = DatasetOpt,
    definition: str = DefinitionOpt,
    device: str = DeviceOpt,
    timeout: int = typer.Option(900, "--timeout", min=1, help="seconds per tool"),
    entry: str = EntryOpt,
    results_dir: Path = ResultsDirOpt,
    as_json: bool = JsonOpt,
):
    """compute-sanitizer (memcheck, racecheck, initcheck, synccheck) on one call; logs kept under results/<gpu>/."""
    import tempfile

    from . import evaluate, nvtools

    nvtools.find_tool("compute-sanitizer", nvtools.SANITIZER_HINT)
    device, ds, workloads = _setup(dataset, definition, device, [workload] if workload else None, None)
    trace = workloads[0] if workload else min(workloads, key=lambda w: w.workload.axes["seq_len"])
    with tempfile.TemporaryDirectory(prefix="fibmoe-sanitize-") as tmp:
        v = evaluate.load_candidate(name, Path(tmp), entry)
        payload, path = nvtools.sanitize_variant(
            v, ds, trace, device, results_dir, tuple(tool or nvtools.SANITIZER_TOOLS), timeout
        )
    if as_json:
        print(json.dumps(payload, indent=2))
    else:
        out.print(f"sanitize: {v.name} T={payload['seq_len']} {payload['uuid']}")
        for c in payload["checks"]:
            color = "green" if c["status"] == "clean" else "red"
            errors = "" if c["errors"] is None else f", {c['errors']} error(s)"
            issue = f": {c['first_issue']}" if c["first_issue"] else ""
            out.print(f"  {c['tool']:10s} [{color}]{c['status']}[/{color}]{errors}{issue}", highlight=False)
            out.print(f"  {'':10s} {c['log']}", style="dim", highlight=False)
    err.print(f"wrote {path}")
    if not payload["clean"]:
        raise typer.Exit(1)


# ---- pack / unpack ---------------------------------------------------------------------------


@app.command()
@guarded
def pack(
    name: str = typer.Argument(..., help="variant to pack"),
    output: Path = typer.Option(Path("solution.json"), "--output", "-o", help="Solution JSON to write"),
    definition: str = typer.Option("contest", "--definition", "-d", help="contest or small"),
    starter_kit: Optional[Path] = typer.Option(
        None, "--starter-kit", help="also write a starter-kit submission repo here"
    ),
):
    """Pack a variant into a flashinfer-bench Solution (validated by flashinfer-bench before writing)."""
    from . import dataset as dataset_mod
    from . import variants

    v = variants.resolve([name])[0]
    solution = variants.pack(v, dataset_mod.resolve_definition(definition).name)
    output.write_text(variants.solution_json(solution))
    out.print(f"wrote {output} ({solution.name}, {len(solution.sources)} sources, definition {solution.definition})")
    if starter_kit:
        variants.write_starter_kit(solution, starter_kit)
        out.print(f"wrote starter-kit repository {starter_kit}")


@app.command()
@guarded
def unpack(
    solution_file: Path = typer.Argument(..., help="Solution JSON"),
    folder: Path = typer.Argument(..., help="variant folder to create"),
    force: bool = typer.Option(False, "--force", help="overwrite files in a non-empty folder"),
):
    """Write a Solution's sources and a variant.toml into a folder (the reverse of pack)."""
    from . import variants

    v = variants.unpack(variants.read_solution(solution_file), folder, force)
    out.print(f"unpacked {v.name} into {folder}")


def run():
    app()


if __name__ == "__main__":
    sys.exit(app())
