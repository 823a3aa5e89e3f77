"""Nsight Compute and compute-sanitizer around one packed solution on one workload.

Both tools launch `python -m fibmoe.nvtools` (the runner at the bottom of this file): it builds the
Solution exactly as flashinfer-bench does, draws the workload's inputs, makes warm-up calls (JIT and
autotuning happen there), then one call. For Nsight Compute that last call sits between
cudaProfilerStart/Stop and ncu runs with `--profile-from-start off`, so only its kernels are measured.

Reading of the hottest kernel (the one with the most GPU time in the call), from the speed-of-light
figures: if neither the SM nor DRAM reaches 60% of its peak the kernel is latency-bound (too little
parallel work, stalls, or launch gaps); otherwise whichever of the two is busier is the bound.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from . import REPO_ROOT, files
from .errors import FibmoeError

NCU_METRICS = {
    "duration": "gpu__time_duration.sum",
    "sm_throughput_pct": "sm__throughput.avg.pct_of_peak_sustained_elapsed",
    "memory_throughput_pct": "gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",
    "dram_throughput_pct": "dram__throughput.avg.pct_of_peak_sustained_elapsed",
    "achieved_occupancy_pct": "sm__warps_active.avg.pct_of_peak_sustained_active",
    "theoretical_occupancy_pct": "sm__maximum_warps_per_active_cycle_pct",
    "registers_per_thread": "launch__registers_per_thread",
}
SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
BUSY_PCT = 60.0
TIME_TO_US = {
    "nsecond": 1e-3,
    "ns": 1e-3,
    "usecond": 1.0,
    "us": 1.0,
    "msecond": 1e3,
    "ms": 1e3,
    "second": 1e6,
    "s": 1e6,
}
NCU_HINT = "install Nsight Compute, or put its folder (for example /usr/local/cuda/bin) on PATH"
SANITIZER_HINT = "it ships with the CUDA toolkit: put its bin folder (for example /usr/local/cuda/bin) on PATH"


def find_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FibmoeError(f"{name} is not on PATH: {hint}")
    return path


def require_cuda(device: str, what: str) -> None:
    if not device.startswith("cuda"):
        raise FibmoeError(f"{what} needs a CUDA GPU (device here: {device})")


def runner_argv(solution_path: Path, ds, trace, device: str, warmup: int, profile_range: bool) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "fibmoe.nvtools",
        "--solution",
        str(solution_path),
        "--definition",
        ds.definition.name,
        "--dataset",
        str(ds.root),
        "--workload",
        trace.workload.uuid,
        "--device",
        device,
        "--warmup",
        str(warmup),
    ]
    return argv + (["--profile-range"] if profile_range else [])


def tool_env(extra: dict | None = None) -> dict:
    """The tools' environment: this checkout's fibmoe first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(extra or {})
    return env


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _write_solution(solution, path: Path) -> Path:
    from .variants import solution_json

    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text(path, solution_json(solution))
    return path


# ---- Nsight Compute ---------------------------------------------------------------------------


def _number(text: str) -> Optional[float]:
    text = (text or "").strip().replace(",", "")
    if not text or text.lower() in ("n/a", "nan", "-"):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def parse_ncu_csv(text: str) -> list[dict]:
    """Kernels from `ncu --import REPORT --csv --page raw`: one row per kernel, metrics as columns,
    optionally a units row under the header. Lines ncu prints around the CSV are ignored."""
    rows = list(csv.reader(io.StringIO("\n".join(ln for ln in text.splitlines() if ln.startswith('"')))))
    header_at = next((i for i, r in enumerate(rows) if "Kernel Name" in r), None)
    if header_at is None:
        return []
    header = rows[header_at]
    body = rows[header_at + 1 :]
    units = {}
    if body and not (body[0][0] if body[0] else "").strip():  # the units row has no ID
        units = dict(zip(header, body[0], strict=False))
        body = body[1:]
    col = {name: i for i, name in enumerate(header)}
    kernels = []
    for row in body:
        if len(row) < len(header):
            continue

        def metric(key, row=row):
            i = col.get(NCU_METRICS[key])
            return _number(row[i]) if i is not None else None

        duration = metric("duration")
        unit = units.get(NCU_METRICS["duration"], "nsecond").strip() or "nsecond"
        kernels.append(
            {
                "name": row[col["Kernel Name"]],
                "duration_us": duration * TIME_TO_US.get(unit, 1e-3) if duration is not None else None,
                **{k: metric(k) for k in NCU_METRICS if k != "duration"},
                "grid": row[col["Grid Size"]] if "Grid Size" in col else None,
                "block": row[col["Block Size"]] if "Block Size" in col else None,
            }
        )
    return kernels


def classify(kernel: dict) -> tuple[str, str]:
    """('memory-bound' | 'compute-bound' | 'latency-bound', one line saying why)."""
    sm = kernel.get("sm_throughput_pct") or 0.0
    dram = kernel.get("dram_throughput_pct") or 0.0
    memory = max(dram, kernel.get("memory_throughput_pct") or 0.0)
    occ = kernel.get("achieved_occupancy_pct")
    occ_text = f", achieved occupancy {occ:.0f}%" if occ is not None else ""
    if max(sm, memory) < BUSY_PCT:
        return "latency-bound", (
            f"latency-bound: SM {sm:.0f}% and memory {memory:.0f}% of peak, both under {BUSY_PCT:.0f}%{occ_text}: "
            "too little parallel work, stalls or launch gaps, not bandwidth or FLOPs"
        )
    if memory >= sm:
        return (
            "memory-bound",
            f"memory-bound: DRAM {dram:.0f}% (memory {memory:.0f}%) vs SM {sm:.0f}% of peak{occ_text}",
        )
    return "compute-bound", f"compute-bound: SM {sm:.0f}% vs memory {memory:.0f}% of peak{occ_text}"


def summarize(kernels: list[dict], top: int = 5) -> dict:
    timed = [k for k in kernels if k.get("duration_us") is not None]
    if not timed:
        raise FibmoeError("ncu measured no kernel in the profiled call")
    total = sum(k["duration_us"] for k in timed)
    ranked = sorted(timed, key=lambda k: k["duration_us"], reverse=True)
    hot = dict(ranked[0])
    hot["share"] = hot["duration_us"] / total if total else None
    bound, reading = classify(hot)
    return {
        "kernels": len(kernels),
        "gpu_time_us": total,
        "hottest": hot,
        "bound": bound,
        "reading": reading,
        "top": [
            {
                k: r.get(k)
                for k in ("name", "duration_us", "sm_throughput_pct", "dram_throughput_pct", "achieved_occupancy_pct")
            }
            for r in ranked[:top]
        ],
    }


def _ncu_failure(text: str) -> str:
    if "ERR_NVGPUCTRPERM" in text:
        return (
            "ncu may not read the GPU performance counters here (ERR_NVGPUCTRPERM): run as root, or load the "
            "driver with NVreg_RestrictProfilingToAdminUsers=0"
        )
    return _tail(text, 8) or "no output"


def profile(
    solution,
    ds,
    trace,
    device: str,
    out_base: Path,
    section_set: Optional[str] = "full",
    timeout: int = 900,
    warmup: int = 2,
    run: Callable = subprocess.run,
) -> dict:
    """Profile one call with ncu; the full report is `<out_base>.ncu-rep`, its raw page `<out_base>.csv`.
    `section_set` None collects only our metrics (fast, for `eval --ncu`)."""
    ncu = find_tool("ncu", NCU_HINT)
    require_cuda(device, "Nsight Compute profiling")
    out_base = Path(out_base)
    solution_path = _write_solution(solution, Path(str(out_base) + ".solution.json"))
    # --clock-control none: measure the card at the clocks it runs (ncu locks them to base by default)
    cmd = [ncu, "--profile-from-start", "off", "--clock-control", "none", "--target-processes", "all", "-f", "-o",
           str(out_base)]  # fmt: skip
    cmd += (["--set", section_set] if section_set else []) + ["--metrics", ",".join(NCU_METRICS.values())]
    cmd += runner_argv(solution_path, ds, trace, device, warmup, profile_range=True)
    try:
        proc = run(cmd, capture_output=True, text=True, timeout=timeout, env=tool_env(), cwd=str(REPO_ROOT))
    except subprocess.TimeoutExpired:
        raise FibmoeError(f"ncu did not finish within {timeout} s (raise --timeout)") from None
    report = Path(str(out_base) + ".ncu-rep")
    log = (proc.stdout or "") + (proc.stderr or "")
    files.write_text(Path(str(out_base) + ".log"), log)
    if proc.returncode != 0 or not report.is_file():
        raise FibmoeError(f"ncu failed (exit {proc.returncode}): {_ncu_failure(log)}".replace("\n", " | "))
    imp = run(
        [ncu, "--import", str(report), "--csv", "--page", "raw", "--print-units", "base"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=tool_env(),
    )
    if imp.returncode != 0:
        raise FibmoeError(f"ncu --import failed: {_tail(imp.stdout + imp.stderr, 3)}".replace("\n", " | "))
    csv_path = Path(str(out_base) + ".csv")
    files.write_text(csv_path, imp.stdout)
    return {
        "report": str(report),
        "csv": str(csv_path),
        "log": str(out_base) + ".log",
        **summarize(parse_ncu_csv(imp.stdout)),
    }


# ---- compute-sanitizer ----------------------------------------------------------------------------


def parse_sanitizer(text: str) -> dict:
    """{'summary': bool, 'errors': int|None, 'warnings': int|None, 'first_issue': str}."""
    errors = warnings = None
    m = re.search(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)", text)
    if m:
        errors, warnings = int(m.group(2)), int(m.group(3))
    m = re.search(r"ERROR SUMMARY: (\d+) errors?", text)
    if m:
        errors = max(errors or 0, int(m.group(1)))
    first = ""
    for line in text.splitlines():
        body = line[len("========= ") :] if line.startswith("========= ") else ""
        if (
            body
            and not body.startswith(" ")
            and not re.match(r"(COMPUTE-SANITIZER|ERROR SUMMARY|RACECHECK SUMMARY)", body)
        ):
            first = body.strip()
            break
    return {"summary": errors is not None, "errors": errors, "warnings": warnings, "first_issue": first}


def sanitize(
    solution,
    ds,
    trace,
    device: str,
    out_base: Path,
    tools: tuple[str, ...] = SANITIZER_TOOLS,
    timeout: int = 900,
    run: Callable = subprocess.run,
) -> list[dict]:
    """Run each compute-sanitizer tool on one call; each tool's full output goes to `<out_base>-<tool>.txt`.
    The caching allocator is off (PYTORCH_NO_CUDA_MEMORY_CACHING=1) so out-of-bounds accesses are seen."""
    exe = find_tool("compute-sanitizer", SANITIZER_HINT)
    require_cuda(device, "compute-sanitizer")
    bad = [t for t in tools if t not in SANITIZER_TOOLS]
    if bad:
        raise FibmoeError(f"unknown sanitizer tool {bad[0]!r} (choose from {', '.join(SANITIZER_TOOLS)})")
    out_base = Path(out_base)
    solution_path = _write_solution(solution, Path(str(out_base) + ".solution.json"))
    argv = runner_argv(solution_path, ds, trace, device, warmup=1, profile_range=False)
    env = tool_env({"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})
    out = []
    for tool in tools:
        log = Path(f"{out_base}-{tool}.txt")
        cmd = [exe, "--tool", tool, "--print-limit", "100"] + argv
        try:
            proc = run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO_ROOT))
        except subprocess.TimeoutExpired:
            files.write_text(log, f"timed out after {timeout} s\n")
            out.append(
                {
                    "tool": tool,
                    "status": "timeout",
                    "errors": None,
                    "returncode": None,
                    "log": str(log),
                    "first_issue": f"timed out after {timeout} s (raise --timeout)",
                }
            )
            continue
        text = (proc.stdout or "") + (proc.stderr or "")
        files.write_text(log, text)
        parsed = parse_sanitizer(text)
        if parsed["summary"] and parsed["errors"]:
            status = "issues"
        elif parsed["summary"] and proc.returncode == 0:
            status = "clean"
        else:
            status = "failed"
        out.append(
            {
                "tool": tool,
                "status": status,
                "errors": parsed["errors"],
                "warnings": parsed["warnings"],
                "returncode": proc.returncode,
                "log": str(log),
                "first_issue": parsed["first_issue"]
                if status == "issues"
                else (_tail(text, 3).replace("\n", " | ") if status == "failed" else ""),
            }
        )
    return out


# ---- reports under results/ --------------------------------------------------------------------------


def report_base(results_dir: Path, slug: str, kind: str, name: str, uuid: str) -> Path:
    from .results import stamp

    folder = Path(results_dir) / slug
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{kind}-{name}-{uuid[:8]}-{stamp()}"


def profile_variant(
    variant, ds, trace, device, results_dir, section_set="full", timeout=900, run=subprocess.run, **where
) -> tuple[dict, Path]:
    """`fibmoe profile`: the report under results/<gpu>/, and a JSON summary beside it."""

    def measure(solution, base):
        return {"ncu": profile(solution, ds, trace, device, base, section_set, timeout, run=run)}

    find_tool("ncu", NCU_HINT)
    require_cuda(device, "Nsight Compute profiling")
    return _one_call_report("profile", variant, ds, trace, device, results_dir, measure, **where)


def sanitize_variant(
    variant, ds, trace, device, results_dir, tools=SANITIZER_TOOLS, timeout=900, run=subprocess.run, **where
) -> tuple[dict, Path]:
    """`fibmoe sanitize`: each tool's full output under results/<gpu>/, and a JSON summary beside them."""

    def measure(solution, base):
        checks = sanitize(solution, ds, trace, device, base, tuple(tools), timeout, run=run)
        return {"clean": all(c["status"] == "clean" for c in checks), "checks": checks}

    find_tool("compute-sanitizer", SANITIZER_HINT)
    require_cuda(device, "compute-sanitizer")
    return _one_call_report("sanitize", variant, ds, trace, device, results_dir, measure, **where)


def _one_call_report(
    kind, variant, ds, trace, device, results_dir, measure, slug=None, provenance=None
) -> tuple[dict, Path]:
    """Pack, run `measure(solution, report base path)` and write its JSON summary under results_dir/<gpu>/
    (`slug`: the GPU folder when the GPU is not this machine's; `provenance`: given rather than read here)."""
    from . import results, variants

    slug = slug or results.results_slug(device)
    solution = variants.pack(variant, ds.definition.name)
    base = report_base(results_dir, slug, kind, variant.name, trace.workload.uuid)
    payload = {
        "provenance": provenance if provenance is not None else results.provenance(device),
        "variant": variant.name,
        "uuid": trace.workload.uuid,
        "seq_len": trace.workload.axes["seq_len"],
        **measure(solution, base),
    }
    return payload, results.write_results(kind, device, payload, results_dir, slug=slug)


# ---- the runner the tools launch ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m fibmoe.nvtools", description="Run one packed solution on one workload (for ncu/sanitizer)."
    )
    p.add_argument("--solution", required=True, help="Solution JSON")
    p.add_argument("--definition", required=True)
    p.add_argument("--dataset", default=None)
    p.add_argument("--workload", required=True, help="uuid (prefix)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--warmup", type=int, default=1, help="calls before the measured one (JIT, autotuning)")
    p.add_argument("--profile-range", action="store_true", help="wrap the last call in cudaProfilerStart/Stop")
    args = p.parse_args(argv)
    try:
        _run_once(args)
    except FibmoeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _run_once(args) -> None:
    import torch
    from flashinfer_bench.bench.evaluators.utils import allocate_outputs

    from . import dataset, inputs, variants

    ds = dataset.load(args.definition, args.dataset)
    trace = ds.select([args.workload])[0]
    runnable = variants.build(variants.read_solution(Path(args.solution)), ds.definition)
    inp = inputs.generate(ds, trace, args.device)
    outs = allocate_outputs(ds.definition, inp, args.device)
    dps = runnable.metadata.destination_passing_style

    def call():
        return runnable(*inp, *outs) if dps else runnable(*inp)

    with torch.no_grad():
        for _ in range(args.warmup):
            call()
        torch.cuda.synchronize()
        if args.profile_range:
            torch.cuda.profiler.start()
        call()
        torch.cuda.synchronize()
        if args.profile_range:
            torch.cuda.profiler.stop()


if __name__ == "__main__":
    sys.exit(main())
