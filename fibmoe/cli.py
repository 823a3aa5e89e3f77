"""The `fibmoe` command line: a thin layer over the library (tests and tools call the library)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import FibmoeError

app = typer.Typer(
    help="Write, prove and ship FP8 MoE kernels for the FlashInfer MLSys 2026 contest (Track A).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
variants_app = typer.Typer(help="The ladder of variants.", invoke_without_command=True)
app.add_typer(variants_app, name="variants")

# markup=False: paths, kernel messages, names and table cells come from outside and are printed as
# they are (a "[/x]" in a path is text, not a rich tag); our own colours are given as styles.
out = Console(width=None if sys.stdout.isatty() else 160, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)  # an error stays one line, however long


def _error(label: str, message: str) -> None:
    err.print(Text.assemble((label, "red"), f" {message}"), highlight=False)


def guarded(fn):
    """One clear error line and exit status 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FibmoeError as e:
            _error("error:", str(e))
            raise typer.Exit(2) from None
        except OSError as e:  # the file system said no (a full disk, a permission, a file-size limit)
            where = f"{e.filename}: " if e.filename else ""
            _error("error:", f"{where}{e.strerror or e}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:  # a bug of ours: still one line, the traceback on request
            if os.environ.get("FIBMOE_DEBUG"):
                raise
            _error("internal error:", f"{type(e).__name__}: {e} (FIBMOE_DEBUG=1 shows the traceback)")
            raise typer.Exit(3) from None

    return wrapper


@app.callback()
def main():
    """Without a GPU, Triton kernels run in Triton's CPU interpreter (set before triton is imported)."""
    from .triton_env import use_interpreter_without_gpu

    use_interpreter_without_gpu()


# ---- shared options --------------------------------------------------------------------------


def flag(name: str, help: str):
    """An on/off option; metavar="" keeps Typer from showing `<bool>` as if it took a value."""
    return typer.Option(False, name, help=help, metavar="")


DatasetOpt = typer.Option(None, "--dataset", help="dataset folder (default: $FIB_DATASET_PATH, else workloads/)")
DefinitionOpt = typer.Option("auto", "--definition", "-d", help="contest, small, or auto (contest on a GPU)")
DeviceOpt = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N")
WorkloadOpt = typer.Option(None, "--workload", "-w", help="uuid prefix (repeatable)")
SeqLenOpt = typer.Option(None, "--seq-len", "-t", help="only workloads with this T (repeatable)")
StyleOpt = typer.Option("contest", "--style", help="contest (as the harness draws inputs) or quantized")
JsonOpt = flag("--json", "print JSON instead of a table")
ResultsDirOpt = typer.Option(None, "--results-dir", help="write results into DIR/<gpu>/ (implies --save)")


def option_group(cls):
    """A frozen dataclass whose fields (each a typer.Option) `option_groups` spreads onto a command."""
    cls = dataclass(frozen=True)(cls)
    cls.__option_group__ = True
    return cls


@option_group
class Selection:
    """Which workloads a command runs on (check, bench, eval)."""

    dataset: Optional[Path] = DatasetOpt
    definition: str = DefinitionOpt
    device: str = DeviceOpt
    workload: Optional[List[str]] = WorkloadOpt
    seq_len: Optional[List[int]] = SeqLenOpt


@option_group
class Recording:
    """How long one variant may take on one workload, and where and how the results go (check, bench, eval)."""

    timeout: float = typer.Option(
        300.0, "--timeout", min=1, help="seconds per variant and workload; past it the verdict is TIMEOUT"
    )
    save: bool = flag("--save", "write the results as evidence under the checkout's results/<gpu>/")
    results_dir: Optional[Path] = ResultsDirOpt
    as_json: bool = JsonOpt


def option_groups(fn):
    """Each parameter of `fn` annotated with an option group (`option_group`: Selection, Recording, Model,
    Evaluation) becomes that group's options on the command line (declared once, in the group) and reaches
    `fn` as one group object."""
    sig = inspect.signature(fn, eval_str=True)
    params, groups = [], {}
    for p in sig.parameters.values():
        if not getattr(p.annotation, "__option_group__", False):
            params.append(p)
            continue
        groups[p.name] = p.annotation
        hints = typing.get_type_hints(p.annotation)
        for f in dataclasses.fields(p.annotation):
            params.append(
                inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
            )

    @functools.wraps(fn)
    def command(*args, **kwargs):
        for name, group in groups.items():
            kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(group)})
        return fn(*args, **kwargs)

    command.__signature__ = sig.replace(parameters=params)
    return command


def _setup(selection: Selection):
    from . import check
    from . import dataset as dataset_mod

    device = check.resolve_device(selection.device)
    definition = selection.definition
    if definition == "auto":
        definition = "contest" if device.startswith("cuda") else "small"
    geometry = dataset_mod.resolve_definition(definition)
    ds = dataset_mod.load(geometry.name, selection.dataset)
    return device, ds, ds.select(selection.workload, selection.seq_len)


def _fmt(x, spec=".3g", none="-"):
    return none if x is None else format(x, spec)


def _status(s: str) -> Text:
    return Text(s, style={"PASSED": "green", "SKIPPED": "yellow"}.get(s, "red"))


# ---- variants --------------------------------------------------------------------------------


@variants_app.callback()
@guarded
def variants_list(ctx: typer.Context, as_json: bool = JsonOpt):
    """List the ladder: rung, name, language, what it changes, last known status."""
    if ctx.invoked_subcommand:
        return
    from . import results, variants

    usable, broken = variants.scan()
    rows = [
        {
            "name": v.name,
            "rung": v.spec.rung,
            "language": v.spec.language,
            "changes": v.spec.changes,
            "path": str(v.path),
            **_evidence(results.evidence(v.name)),
            "error": None,
        }
        for v in usable
    ]
    rows += [
        {"name": b.name, "rung": None, "language": None, "changes": "", "path": str(b.path), **_evidence(None)}
        | {"error": b.error}
        for b in broken
    ]
    if as_json:
        print(results.dumps(rows))
        return
    table = Table(title="fibmoe ladder")
    for col in ("rung", "name", "language", "what it changes", "strongest evidence", "from"):
        table.add_column(col)
    for r in rows:
        status = Text(f"error: {r['error']}", style="red") if r["error"] else r["last_status"] or "never run"
        table.add_row(
            _fmt(r["rung"], "d"), r["name"], r["language"] or "-", r["changes"], status,
            _shown_path(r["evidence_file"]),
        )  # fmt: skip
    out.print(table)


def _chosen(names: Optional[List[str]]) -> list:
    """The variants named (all usable ones when none is); when all are asked for, a line for each broken
    one left out, so that one broken folder never stops work on the others."""
    from . import variants

    if names:
        return variants.resolve(names)
    usable, broken = variants.scan()
    for b in broken:
        err.print(f"warning: left out {b.name}: {b.error} (see `fibmoe variants`)", style="yellow", highlight=False)
    return usable


def _evidence(found: Optional[dict]) -> dict:
    return {"last_status": found["status"] if found else "", "evidence_file": found["source"] if found else None}


def _shown_path(path: Optional[str]) -> str:
    """A path relative to the current folder when it is under it (shorter in a table), else as it is."""
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


@variants_app.command("new")
@guarded
def variants_new(
    name: str = typer.Argument(..., help="name of the new variant (folder: name with - as _)"),
    source: str = typer.Option(..., "--from", help="variant to copy"),
):
    """Scaffold a new variant by copying an existing one."""
    from . import variants

    v = variants.scaffold(name, variants.resolve([source])[0])
    out.print(f"created {v.path} from {source}; give it a rung in {v.path / variants.SPEC_FILE}", highlight=False)


# ---- check -----------------------------------------------------------------------------------


@app.command()
@guarded
@option_groups
def check(
    names: Optional[List[str]] = typer.Argument(None, help="variants (default: all)"),
    trials: int = typer.Option(3, "--trials", min=1, help="fresh random inputs per workload"),
    style: str = StyleOpt,
    *,
    selection: Selection,
    recording: Recording,
):
    """Diff-test variants against the reference with the official rule; exit 0 only if all passed."""
    from . import check as check_mod
    from . import results

    device, ds, workloads = _setup(selection)
    chosen = _chosen(names)
    writer = None
    if recording.save or recording.results_dir is not None:
        head = {"provenance": results.provenance(device)}
        writer = _Writer("check", device, ds, results.destination(recording.save, recording.results_dir), head)
    records = check_mod.run_check(
        chosen, ds, workloads, device, trials, style, _progress(), recording.timeout,
        writer.update if writer else None,
    )  # fmt: skip
    if writer:
        writer.finish(records)
    if recording.as_json:
        print(results.dumps(records))
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
                r["message"][:90],
            )
        out.print(table)
        for name in dict.fromkeys(r["variant"] for r in records):
            rows = [r for r in records if r["variant"] == name]
            passed = sum(r["status"] == "PASSED" for r in rows)
            skipped = [r["message"] for r in rows if r["status"] == "SKIPPED"]
            why = f", skipped: {skipped[0]}" if skipped else ""
            out.print(f"{name}: {passed}/{len(rows)} passed{why}", highlight=False)
    if not check_mod.all_passed(records):
        raise typer.Exit(1)


class _Writer:
    """A run's results file (and its Trace records), rewritten atomically as each workload ends: a run
    that is killed keeps every workload it finished (`"complete": false` until the end)."""

    def __init__(self, kind: str, device: str, ds, folder: Path, head: dict, slug: Optional[str] = None):
        from . import results

        self.kind, self.device, self.ds, self.head = kind, device, ds, head
        self.path = results.results_path(kind, device, folder, slug)
        err.print(f"writing {self.path} (and its flashinfer-bench traces beside it)", highlight=False)

    def update(self, records: list[dict], complete: bool = False, **extra) -> None:
        from . import results

        payload = {
            **self.head,
            "definition": self.ds.definition.name,
            **extra,
            "complete": complete,
            "records": records,
        }
        results.write_results(self.kind, self.device, payload, None, path=self.path)
        results.write_traces(self.path, results.traces_of(records, self.ds, self.device))

    def finish(self, records: list[dict], **extra) -> None:
        self.update(records, complete=True, **extra)
        err.print(f"wrote {self.path}", highlight=False)


# ---- bench -----------------------------------------------------------------------------------

CPU_BENCH = {"warmup": 1, "iterations": 3, "trials": 1}  # the CPU timing counts unless asked otherwise
CPU_INTERPRETER_WORKLOADS = 2  # Triton rungs in the interpreter: the smallest T only


@app.command()
@guarded
@option_groups
def bench(
    names: Optional[List[str]] = typer.Argument(None, help="variants (default: all)"),
    warmup: Optional[int] = typer.Option(None, "--warmup", min=0, help="default 10 (1 on a CPU)"),
    iterations: Optional[int] = typer.Option(None, "--iterations", min=1, help="default 50 (3 on a CPU)"),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="default 3 (1 on a CPU)"),
    style: str = StyleOpt,
    bandwidth: Optional[float] = typer.Option(None, "--bandwidth", help="override GPU bandwidth, TB/s"),
    fp8_rate: Optional[float] = typer.Option(None, "--fp8-rate", help="override dense FP8 rate, TFLOP/s"),
    dense_gemm: Optional[bool] = typer.Option(
        None, "--dense-gemm/--no-dense-gemm", help="time cuBLAS FP8 GEMMs of each workload's FLOPs (default: T > 2048)"
    ),
    official: bool = flag("--official", "run flashinfer-bench's own Benchmark with the contest's MoE settings (GPU)"),
    remote: Optional[str] = typer.Option(
        None, "--remote", help="run the official path on Modal: b200, h100, h200 or any Modal GPU string"
    ),
    parallel: bool = flag("--parallel", "with --remote: one container per variant (per workload for one variant)"),
    baseline: Optional[bool] = typer.Option(
        None, "--baseline/--no-baseline", help="run the FlashInfer baseline beside (default: where it can run)"
    ),
    *,
    selection: Selection,
    recording: Recording,
):
    """Time variants and the reference with the official protocol, beside the roofline floor."""
    from . import results, runner

    counts = {"warmup": warmup, "iterations": iterations, "trials": trials}
    if official or remote:
        defaults = runner.Settings()
        counts = {k: v if v is not None else getattr(defaults, k) for k, v in counts.items()}
        return _bench_official(
            names, selection, recording, style, bandwidth, fp8_rate, remote, parallel, baseline, **counts
        )
    if parallel or baseline is not None:
        raise FibmoeError("--parallel and --baseline go with --official or --remote")
    device, ds, workloads = _setup(selection)
    chosen = _chosen(names)
    if not device.startswith("cuda") and all(v is None for v in counts.values()):
        counts = dict(CPU_BENCH)
        err.print(
            "on a CPU: 1 warm-up, 3 timed calls, 1 trial per workload instead of 10/50/3 (wall-clock figures only "
            "rank variants roughly; --warmup/--iterations/--trials to change)",
            highlight=False,
        )
        workloads = _cpu_bench_selection(chosen, ds, workloads, device)
    defaults = runner.Settings()
    counts = {k: v if v is not None else getattr(defaults, k) for k, v in counts.items()}
    settings = runner.Settings(**counts, style=style, timeout_s=recording.timeout, dense_gemm=dense_gemm)
    settings = runner.resolve_seed(settings)
    hw = _hardware(device, bandwidth, fp8_rate)
    head = {"provenance": results.provenance(device, settings), "hardware": hw.__dict__ if hw else None}
    if device.startswith("cuda"):
        _progress()("empty launch spans (same protocol)")
        head["launch"] = runner.launch_spans(device, settings)
    folder = results.destination(recording.save, recording.results_dir)
    if not recording.save and recording.results_dir is None:
        err.print("ad-hoc run: results go to the per-user data folder (--save puts evidence in results/<gpu>/)")
    writer = _Writer("bench", device, ds, folder, head)
    records = runner.run(
        chosen, ds, workloads, device, settings, timed=True, hw=hw, progress=_progress(),
        on_workload=lambda recs: writer.update(recs, summary=runner.summary(recs)),
    )  # fmt: skip
    payload = {**head, "definition": ds.definition.name, "summary": runner.summary(records), "records": records}
    writer.finish(records, summary=payload["summary"])
    if recording.as_json:
        print(results.dumps({**payload, "kind": "bench", "complete": True}))
    else:
        _print_bench(payload, device)
    if any(r["status"] not in ("PASSED", "SKIPPED") for r in records):
        raise typer.Exit(1)


def _cpu_bench_selection(chosen: list, ds, workloads: list, device: str) -> list:
    """Plain `bench` on a CPU must end in minutes: Triton rungs run in the interpreter, seconds a call, so
    when one is chosen only the CPU_INTERPRETER_WORKLOADS smallest-T workloads are timed (said on stderr)."""
    from . import check as check_mod

    interpreted = [v.name for v in chosen if v.spec.language == "triton" and not check_mod.skip_reason(v, ds, device)]
    if not interpreted or len(workloads) <= CPU_INTERPRETER_WORKLOADS:
        return workloads
    picked = sorted(workloads, key=lambda w: w.workload.axes["seq_len"])[:CPU_INTERPRETER_WORKLOADS]
    err.print(
        f"on a CPU: {', '.join(interpreted)} run in the Triton interpreter (seconds a call): timing the "
        f"{CPU_INTERPRETER_WORKLOADS} smallest-T of {len(workloads)} workloads; name others with -t/-w",
        highlight=False,
    )
    return [w for w in workloads if w in picked]


def _print_bench(payload: dict, device: str) -> None:
    timer = payload["provenance"]["timer"]
    table = Table(title=f"bench: {payload['definition']} on {payload['provenance']['device_name']} ({timer})")
    for col in (
        "variant",
        "T",
        "workload",
        "status",
        "mean ms",
        "median ms",
        "GPU-side ms",
        "ref ms",
        "x ref",
        "x prev",
        "floor ms",
        "of floor",
        "x cuBLAS",
    ):
        table.add_column(col)
    for r in payload["records"]:
        table.add_row(
            r["variant"],
            str(r["seq_len"]),
            r["uuid"][:8],
            _status(r["status"]),
            _fmt(r["latency_ms"], ".4f"),
            _fmt(r.get("median_ms"), ".4f"),
            _fmt(r.get("gpu_side_ms"), ".4f"),
            _fmt(r["reference_ms"], ".3f"),
            _fmt(r["speedup_vs_reference"], ".1f"),
            _fmt(r["speedup_vs_previous"], ".2f"),
            _fmt(r["floor_ms"], ".4f"),
            _fmt(r["fraction_of_floor"], ".0%"),
            _fmt(r.get("x_dense_gemm"), ".2f"),
        )
    out.print(table)
    launch = payload.get("launch") or {}
    if "error" in launch:
        out.print(f"empty launch spans: not measured: {launch['error'].splitlines()[-1]}", highlight=False)
    elif launch:
        gpu = launch.get("empty_triton_kernel_gpu_side")
        out.print(
            "beside the floor, the span of nothing (same protocol): an empty Triton kernel launch "
            f"{launch['empty_triton_kernel']['mean_ms'] * 1e3:.1f} us"
            + (f" ({gpu['mean_ms'] * 1e3:.1f} us of it on the GPU's side)" if gpu else "")
            + f", an empty Python call {launch['empty_python_call']['mean_ms'] * 1e3:.1f} us (means)",
            highlight=False,
        )
    if any(r.get("gpu_side_ms") for r in payload["records"]):
        out.print(
            "GPU-side ms: the same calls queued behind a busy GPU, the host's launch path left out (a process "
            "draws it slow or fast: compare small-T rows there; the mean is the contest's figure)",
            highlight=False,
        )
    dense = {r["seq_len"]: r["dense_gemm_ms"] for r in payload["records"] if r.get("dense_gemm_ms")}
    for t, ms in dense.items():
        out.print(
            f"T={t}: cuBLAS FP8 GEMMs of the same FLOPs (no routing, no block scales) {ms:.4f} ms", highlight=False
        )
    for name, s in payload["summary"].items():
        out.print(
            f"{name}: {s['passed']}/{s['workloads']} passed, mean speedup over the reference "
            f"{s['mean_speedup_vs_reference']:.2f}x, mean fraction of floor {_fmt(s['mean_fraction_of_floor'], '.0%')}"
        )
    if not device.startswith("cuda"):
        out.print(
            "CPU wall-clock figures: not comparable with GPU timings; no roofline floor for a CPU", style="yellow"
        )


def _progress():
    """Progress lines go to stderr in every mode (stdout stays clean for --json)."""
    return lambda msg: err.print(f"  {msg}", style="dim", highlight=False, markup=False)


def _hardware(device: str, bandwidth: Optional[float] = None, fp8_rate: Optional[float] = None):
    from . import results
    from .roofline import hardware_for

    return hardware_for(
        results.device_name(device) if device.startswith("cuda") else "cpu",
        bandwidth * 1e12 if bandwidth else None,
        fp8_rate * 1e12 if fp8_rate else None,
    )


def _bench_official(
    names, selection: Selection, recording: Recording, style, bandwidth, fp8_rate, remote, parallel, baseline,
    warmup, iterations, trials,
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
    chosen = _chosen(names)
    rungs = {v.name: v.spec.rung for v in chosen}
    slug = None
    if remote:
        gpu = remote_mod.resolve_gpu(remote)
        chosen_definition, picked = selection.definition, (selection.workload, selection.seq_len)
        geometry = dataset_mod.resolve_definition("contest" if chosen_definition == "auto" else chosen_definition)
        ds = dataset_mod.load(geometry.name, selection.dataset)  # the local copy: uuids to select and fan out
        selected = ds.select(*picked)
        solutions = [variants.pack(v, geometry.name) for v in chosen]
        payload = remote_mod.run_remote(
            solutions,
            geometry.name,
            gpu,
            settings,
            workload_uuids=[w.workload.uuid for w in selected] if any(picked) else None,
            all_uuids=[w.workload.uuid for w in selected],
            parallel=parallel,
            baseline=baseline,
            rungs=rungs,
            bandwidth=bandwidth,
            fp8_rate=fp8_rate,
            executor=_modal_executor(),
        )
        device = "cuda"
        slug = results.slug_of(payload["provenance"].get("device_name", gpu))
    else:
        device, ds, workloads = _setup(selection)
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
            progress=_progress(),
        )
    folder = results.destination(recording.save, recording.results_dir)
    path = results.write_results("official", device, {**payload, "complete": True}, folder, slug=slug)
    if recording.as_json:
        print(results.dumps(payload))
    else:
        _print_bench(payload, device)
        _print_official(payload)
    err.print(f"wrote {path}")
    if official.any_failed(payload["records"]):
        raise typer.Exit(1)


def _modal_executor():
    """`modal_app.execute`, imported only now (modal is optional); one line when modal is missing."""
    from . import remote

    remote.import_modal()
    from . import modal_app

    return modal_app.execute


def _print_official(payload: dict) -> None:
    for r in payload["records"]:
        if r["status"] != "PASSED":
            out.print(f"{r['variant']} T={r['seq_len']} {r['uuid']}: {r['status']}: {r['message']}", highlight=False)
    info = payload["official"]
    if not info["official_settings"]:
        out.print(f"not the official settings: {info['settings']}", style="yellow", highlight=False)
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
@option_groups
def eval_(
    target: str = TargetArg,
    quick: bool = flag("--quick", "5 workloads, 1 trial, 3 warm-up and 10 timed calls"),
    ncu: bool = flag("--ncu", "add Nsight Compute figures for the hottest kernel"),
    official: bool = flag("--official", "time with flashinfer-bench's Benchmark (GPU)"),
    entry: str = EntryOpt,
    *,
    selection: Selection,
    recording: Recording,
):
    """Score one candidate for a search loop or an agent: pack, check, bench; one JSON object with --json."""
    import tempfile

    from . import evaluate, nvtools, results

    device, ds, workloads = _setup(selection)
    if quick and not (selection.workload or selection.seq_len):
        workloads = evaluate.quick_workloads(workloads)
    if ncu:
        nvtools.find_tool("ncu", nvtools.NCU_HINT)
        nvtools.require_cuda(device, "--ncu")
    with tempfile.TemporaryDirectory(prefix="fibmoe-eval-") as tmp:
        v = evaluate.load_candidate(target, Path(tmp), entry)
        res = evaluate.evaluate(
            v, ds, workloads, device, quick, _hardware(device), official, progress=_progress(), source=target,
            timeout_s=recording.timeout,
        )  # fmt: skip
        if ncu:
            if res["all_passed"]:
                evaluate.add_ncu(res, v, ds, workloads, device)
            else:
                res["ncu"] = {"error": "not profiled: the candidate did not pass"}
    if recording.save or recording.results_dir is not None:
        folder = results.destination(recording.save, recording.results_dir)
        path = results.write_results("eval", device, {"provenance": results.provenance(device), **res}, folder)
        results.write_traces(path, results.traces_of(res["per_workload"], ds, device))
        err.print(f"wrote {path} and its flashinfer-bench traces")
    if recording.as_json:
        print(results.dumps(res))
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
        out.print(Text.assemble((f"{res['stage']} failed:", "red"), f" {res['error']}"), highlight=False)
    if "ncu" in res:
        n = res["ncu"]
        out.print(
            f"ncu: {n['error']}" if "error" in n else f"ncu ({n['kernel'][:60]}): {n['reading']}", highlight=False
        )


def _tool_results(results_dir: Optional[Path]) -> Path:
    """Where profile/sanitize keep their reports: --results-dir, else the per-user data folder."""
    from . import results

    return results.destination(False, results_dir)


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
    results_dir: Optional[Path] = ResultsDirOpt,
    as_json: bool = JsonOpt,
):
    """Nsight Compute on one call of a variant; the full report is kept under results/<gpu>/."""
    import tempfile

    from . import evaluate, nvtools, results

    nvtools.find_tool("ncu", nvtools.NCU_HINT)
    device, ds, workloads = _setup(Selection(dataset, definition, device, [workload], None))
    with tempfile.TemporaryDirectory(prefix="fibmoe-profile-") as tmp:
        v = evaluate.load_candidate(name, Path(tmp), entry)
        folder = _tool_results(results_dir)
        payload, path = nvtools.profile_variant(v, ds, workloads[0], device, folder, section_set, timeout)
    if as_json:
        print(results.dumps(payload))
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
    results_dir: Optional[Path] = ResultsDirOpt,
    as_json: bool = JsonOpt,
):
    """compute-sanitizer (memcheck, racecheck, initcheck, synccheck) on one call; logs kept under results/<gpu>/."""
    import tempfile

    from . import evaluate, nvtools, results

    nvtools.find_tool("compute-sanitizer", nvtools.SANITIZER_HINT)
    device, ds, workloads = _setup(Selection(dataset, definition, device, [workload] if workload else None, None))
    trace = workloads[0] if workload else min(workloads, key=lambda w: w.workload.axes["seq_len"])
    with tempfile.TemporaryDirectory(prefix="fibmoe-sanitize-") as tmp:
        v = evaluate.load_candidate(name, Path(tmp), entry)
        payload, path = nvtools.sanitize_variant(
            v, ds, trace, device, _tool_results(results_dir), tuple(tool or nvtools.SANITIZER_TOOLS), timeout
        )
    if as_json:
        print(results.dumps(payload))
    else:
        out.print(f"sanitize: {v.name} T={payload['seq_len']} {payload['uuid']}")
        for c in payload["checks"]:
            color = "green" if c["status"] == "clean" else "red"
            errors = "" if c["errors"] is None else f", {c['errors']} error(s)"
            issue = f": {c['first_issue']}" if c["first_issue"] else ""
            out.print(Text.assemble(f"  {c['tool']:10s} ", (c["status"], color), f"{errors}{issue}"), highlight=False)
            out.print(f"  {'':10s} {c['log']}", style="dim", highlight=False)
    err.print(f"wrote {path}")
    if not payload["clean"]:
        raise typer.Exit(1)


# ---- search loops: agent / evolve --------------------------------------------------------------


@option_group
class Model:
    """The model a search loop asks for kernels (agent, evolve)."""

    provider: str = typer.Option("openai", "--provider", help="openai (any OpenAI-compatible endpoint) or anthropic")
    model: str = typer.Option("", "--model", help="model name (default: gpt-4.1 / claude-sonnet-4-6)")
    base_url: Optional[str] = typer.Option(None, "--base-url", help="endpoint, e.g. http://localhost:8000/v1 for vLLM")
    api_key_env: str = typer.Option(
        "", "--api-key-env", help="environment variable with the key (default per provider)"
    )
    max_tokens: int = typer.Option(16000, "--max-tokens", min=1, help="reply length limit")
    temperature: Optional[float] = typer.Option(
        None, "--temperature", help="sampling temperature (default: the model's)"
    )
    price: Optional[str] = typer.Option(
        None, "--price", help="USD per million input,output tokens (e.g. 3,15) for the cost"
    )


@option_group
class LoopRun:
    """Where a search loop keeps its run, and how it starts (agent, evolve)."""

    prompts: Optional[Path] = typer.Option(
        None, "--prompts", help="folder of prompt files that replace the shipped ones"
    )
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue this run folder (runs/<mode>-<time>)")
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="where run folders go")
    as_json: bool = JsonOpt


@option_group
class Evaluation:
    """How a search loop evaluates its candidates (agent, evolve)."""

    definition: str = DefinitionOpt
    device: str = DeviceOpt
    workload: Optional[List[str]] = WorkloadOpt
    seq_len: Optional[List[int]] = SeqLenOpt
    timeout: float = typer.Option(900.0, "--timeout", min=1, help="seconds per evaluation; the process group is killed")
    repeats: int = typer.Option(3, "--repeats", min=1, help="full evaluations that must all pass to promote")
    min_gain: float = typer.Option(
        0.01, "--min-gain", min=0, help="promote only above the best's score by this fraction (0.01: 1%)"
    )
    gpus: Optional[str] = typer.Option(None, "--gpus", help="GPU indices (0,1) or a count: one evaluation worker each")
    workers: int = typer.Option(1, "--workers", min=1, help="evaluation workers without GPUs (CPU smoke runs)")
    eval_backend: str = typer.Option("local", "--eval-backend", help="local, or modal (each evaluation on a Modal GPU)")
    gpu: str = typer.Option("b200", "--gpu", help="Modal GPU for --eval-backend modal")


def _prompts_dir(run: LoopRun) -> Optional[str]:
    return str(run.prompts) if run.prompts else None


def _loop_configs(m: Model, ev: Evaluation, ncu: bool):
    from .loops import llm, sandbox

    if ev.eval_backend not in ("local", "modal"):
        raise FibmoeError(f"--eval-backend {ev.eval_backend!r}: choose local or modal")
    gpu = ev.gpu
    if ev.eval_backend == "modal":
        from .remote import resolve_gpu

        gpu = resolve_gpu(gpu)
    llm_config = llm.LLMConfig(
        provider=m.provider,
        model=m.model,
        base_url=m.base_url,
        api_key_env=m.api_key_env,
        max_tokens=m.max_tokens,
        temperature=m.temperature,
        price=llm.parse_price(m.price),
    )
    options = sandbox.EvalOptions(
        definition=ev.definition,
        device=ev.device,
        workloads=list(ev.workload or []),
        seq_lens=list(ev.seq_len or []),
        timeout_s=ev.timeout,
        repeats=ev.repeats,
        min_gain=ev.min_gain,
        gpus=sandbox.parse_gpus(ev.gpus, ev.device) if ev.eval_backend == "local" else [],
        workers=ev.workers,
        backend=ev.eval_backend,
        modal_gpu=gpu,
        ncu=ncu,
    )
    return llm_config, options


def _run_loop(
    loop: typing.Callable,
    config_cls: type,
    budget: str,
    asked: Optional[int],
    run: LoopRun,
    m: Model,
    ev: Evaluation,
    ncu: bool = False,
    **settings,
) -> None:
    """Carry out a loop command (agent, evolve: `loop`, configured by a `config_cls`) and print its summary.
    A new run gets the whole configuration: the model, the evaluation, the prompts, the command's own `settings`,
    and `asked` as its budget (the field named `budget`: steps, iterations; None: the class's default). A resumed
    run keeps the configuration it was started with, its budget raised to `asked` (None: as it was)."""
    more = {budget: asked} if asked else {}
    if run.resume is None:
        llm_config, options = _loop_configs(m, ev, ncu)
        config = config_cls(llm=llm_config, eval=options, prompts_dir=_prompts_dir(run), **settings, **more)
    else:
        config = config_cls(**more) if more else None
    _print_loop_summary(loop(config, run.resume, run.runs_dir), run.as_json)


def _print_loop_summary(summary: dict, as_json: bool) -> None:
    from . import results

    if as_json:
        print(results.dumps(summary))
        return
    best = summary["best"]
    gain = f", {summary['gain_over_start']:.3f}x the start" if summary.get("gain_over_start") else ""
    u = summary["usage"]
    cost = "unknown cost" if u["cost_usd"] is None else f"${u['cost_usd']:.4f}"
    out.print(f"run {summary['folder']}", highlight=False)
    out.print(f"  start {summary['start']['from']}: score {_fmt(summary['start']['score'], '.4g')}", highlight=False)
    out.print(
        f"  best: {best['id']} score {best['score']:.4g}{gain} -> {best['variant']}"
        if best
        else "  best: none verified",
        highlight=False,
    )
    out.print(f"  verdicts: {summary['statuses']}", highlight=False)
    out.print(f"  model calls {u['calls']}, tokens {u['input_tokens']} in / {u['output_tokens']} out, {cost}")


@app.command()
@guarded
@option_groups
def agent(
    start: str = typer.Option("r3-triton-fp8", "--from", help="variant, variant folder, kernel .py, or scratch"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="steps (default 10; with --resume: extend)"),
    ncu: bool = flag("--ncu", "show the model Nsight Compute's reading of the best kernel"),
    *,
    m: Model,
    ev: Evaluation,
    run: LoopRun,
):
    """The iterative agent: prompt, apply the reply, check, evaluate, keep the best verified kernel."""
    from .loops import agent as agent_mod

    _run_loop(agent_mod.agent, agent_mod.AgentConfig, "steps", steps, run, m, ev, ncu, start=start)


@app.command()
@guarded
@option_groups
def evolve(
    start: str = typer.Option(
        "examples/openevolve/initial_program.py", "--from", help="variant, variant folder or kernel .py to evolve"
    ),
    iterations: Optional[int] = typer.Option(None, "--iterations", min=1, help="default 20; with --resume: extend"),
    islands: int = typer.Option(3, "--islands", min=1, help="OpenEvolve islands"),
    population: int = typer.Option(100, "--population", min=2, help="OpenEvolve population size"),
    quick_threshold: float = typer.Option(0.01, "--quick-threshold", help="quick score needed for the full run"),
    seed: int = typer.Option(42, "--seed", help="OpenEvolve's random seed"),
    *,
    m: Model,
    ev: Evaluation,
    run: LoopRun,
):
    """Population search with OpenEvolve as the engine and fibmoe's evaluation as its cascade."""
    from .loops import evolve as evolve_mod

    _run_loop(
        evolve_mod.evolve,
        evolve_mod.EvolveConfig,
        "iterations",
        iterations,
        run,
        m,
        ev,
        start=start,
        islands=islands,
        population=population,
        quick_threshold=quick_threshold,
        seed=seed,
    )


# ---- pack / unpack ---------------------------------------------------------------------------


@app.command()
@guarded
def pack(
    name: str = typer.Argument(..., help="variant to pack"),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Solution JSON to write (default: ./solution.json, never replaced without --force)"
    ),
    definition: str = typer.Option("contest", "--definition", "-d", help="contest or small"),
    starter_kit: Optional[Path] = typer.Option(
        None, "--starter-kit", help="also write a starter-kit submission repo here"
    ),
    force: bool = flag("--force", "replace an existing ./solution.json when no -o is given"),
):
    """Pack a variant into a flashinfer-bench Solution (validated by flashinfer-bench before writing)."""
    from . import dataset as dataset_mod
    from . import files, variants

    if output is None:  # a file named with -o is replaced on purpose; the default one only with --force
        output = Path("solution.json")
        if output.exists() and not force:
            raise FibmoeError(f"{output} exists: name the file with -o, or replace it with --force")
    v = variants.resolve([name])[0]
    solution = variants.pack(v, dataset_mod.resolve_definition(definition).name)
    files.write_text(output, variants.solution_json(solution, v))
    out.print(
        f"wrote {output} ({solution.name}, {len(solution.sources)} sources, definition {solution.definition})",
        highlight=False,
    )
    if starter_kit:
        variants.write_starter_kit(solution, starter_kit, v)
        out.print(f"wrote starter-kit repository {starter_kit}")


@app.command()
@guarded
def unpack(
    solution_file: Path = typer.Argument(..., help="Solution JSON"),
    folder: Path = typer.Argument(..., help="variant folder to create"),
    force: bool = flag("--force", "overwrite files in a non-empty folder"),
    name: Optional[str] = typer.Option(None, "--name", help="unpack under this variant name instead"),
):
    """Write a Solution's sources and a variant.toml into a folder (the reverse of pack)."""
    from . import variants

    solution, packed = variants.read_packed(solution_file)
    v = variants.unpack(solution, folder, force, packed=packed, name=name)
    out.print(f"unpacked {v.name} into {folder}", highlight=False)


def run():
    app()


if __name__ == "__main__":
    sys.exit(app())
