"""Time rung 4 with explicit tile shapes (GPU only): one device call compares several shapes per T.

    python scripts/r4_tiles_sweep.py --T 7,56,901 --try "stages3:num_stages=3" --try "nopf:prefetch_w2=0"

Every shape starts from the tile table's entry for that T with the named fields replaced. Above the
fused path's T (11948, 14107) there are no tiles to try: the two large-T paths are timed instead, rung
3's kernels and `Runner(large_t_gluon=True)` (issue 8's grouped Gluon GEMMs, sm_90); `--large-path` times
those two at the fused path's T as well, beside its tile shapes (`Runner(fused_max_t=0)`). Each one is
checked on fresh contest-style inputs (NaN-poisoned output, relative L2 error against the fp32
reference, a repeated call; with `--stress N`, N more calls on fresh inputs, each checked): a wrong one
(`accuracy_problem`) is an ERROR row, not timed, and the sweep exits 1. The others are timed as the
harness times a call (flashinfer-bench's `do_bench`: cold L2, 10 warm-up and 50 timed spans, the mean;
the median beside it; with `--rounds N` every shape of a T is timed N times, interleaved in rotated
order in the same process, and the median round is the result, each round printed beside it); the host
path of a call is timed on its own (`host us`: the median time from the Python call to its return, the
kernel queued), the call's span queued behind a busy GPU (`queued`: the GPU's side of a span alone,
v80), and before each T the span of an empty Triton launch in the same process (`launch`: a
process's slow state shows there, v35). With `--kernel-rounds N` (large T, the Gluon path) each
kernel's span inside a call is timed too, N rounds interleaved across the shapes (`kernel_spans`): the
per-kernel A/B that whole-call means cannot resolve on a machine whose large-T calls drift by 10% from
round to round (v52). With rounds, each try is also paired with its T's own shape round by round
(`paired_summary`: the median difference and in how many rounds it was faster, for the call and the
summed kernel spans), the figure an A/B in the NOTES quotes. A table on stdout, JSON under $OUT.
"""

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fibmoe import dataset, inputs, reference, variants  # noqa: E402
from fibmoe.runner import queued_spans  # noqa: E402

DEFINITION = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
# the large-T workspace's own arguments (`--large-try`), beside rung 3's tile fields
GLUON_FIELDS = {"gemm2_columns": int, "group_m": int, "shared_lo_scale": bool, "skip_padding_halves": bool,
                "gemm2_under_gemm1": bool, "dynamic_items": bool, "gather_rows": bool}
LARGE_T_PATHS = [("rung3-path", {"large_t_gluon": False}), ("gluon-gemms", {"large_t_gluon": True})]  # Runner arguments


def parse_try(spec: str, tiles_cls, extra=None) -> tuple[str, dict]:
    """NAME:field=value,... -> (NAME, {field: value}) with each value of the tile field's own type
    (`extra`: more {field: type} allowed)."""
    name, _, fields = spec.partition(":")
    kinds = {f.name: f.type for f in dataclasses.fields(tiles_cls)} | (extra or {})
    out = {}
    for item in filter(None, fields.split(",")):
        k, v = item.split("=")
        if k not in kinds:
            raise SystemExit(f"--try {spec}: {k} is not a field of Tiles ({', '.join(kinds)})")
        out[k] = bool(int(v)) if kinds[k] in (bool, "bool") else int(v)
    return name, out


KINDS = {1: "gemm1", 2: "gemm2", 3: "finalize"}
REL_L2_BOUND = 3e-3  # the issues' accuracy bar against the fp32 reference (rung 3 measures 1.7-2.4e-3)


def accuracy_problem(rel_l2: float, nan: int, deterministic: bool) -> str | None:
    """Why a shape's output is not a result worth timing (None if it is): NaN left in the poisoned
    output, a relative L2 error at or over REL_L2_BOUND (or not a number), or different bits on a
    repeated call."""
    if nan:
        return f"{nan} output elements NaN (never written)"
    if not rel_l2 < REL_L2_BOUND:  # also NaN
        return f"rel L2 {rel_l2:.3g} against the fp32 reference (bound {REL_L2_BOUND:g})"
    if not deterministic:
        return "different bits on a repeated call"
    return None


def checked_call(runner, inp, ref) -> tuple[torch.Tensor, float, int]:
    """One call of `runner` on `inp` (the call's 10 inputs) into a NaN-poisoned bf16 output: (the output,
    its relative L2 error against the fp32 reference `ref`, how many elements are NaN)."""
    out = torch.full(ref.shape, float("nan"), dtype=torch.bfloat16, device=ref.device)
    runner(*inp, out)
    return out, ((out.float() - ref).norm() / ref.norm()).item(), int(out.isnan().sum())


def stress_problem(runner, fresh, n: int) -> str | None:
    """Call `runner` n times, each on fresh inputs (`fresh(i)` -> (the call's 10 inputs, its fp32
    reference)), each checked (`checked_call`): the first wrong call, named, or None. A race shows as a
    rare bad call that one accuracy check misses (v32: one trial in 57 at T = 53, rel L2 2.1e-2)."""
    for i in range(n):
        _, rel, nan = checked_call(runner, *fresh(i))
        problem = accuracy_problem(rel, nan, True)
        if problem:
            return f"call {i + 1} of {n} on fresh inputs: {problem}"
    return None


def trace_summary(trace: torch.Tensor, n_items: int, nprog: int) -> dict:
    """Work-item timeline of one call from the kernel's trace records ([kind << 16 | program, start, ready,
    end] for each of the n_items items, then [-, start, GEMM phase start, exit] per program), in us from
    the first start."""
    rec = trace.view(-1, 4)
    items, progs = rec[:n_items], rec[n_items : n_items + nprog]
    t0 = progs[:, 1].min().item()
    us = lambda x: (x - t0) / 1e3  # noqa: E731
    out = {"span_us": us(progs[:, 3].max().item()), "gemm_phase_start_us": [us(progs[:, 2].min().item()),
           us(progs[:, 2].max().item())]}  # fmt: skip
    busy = torch.zeros(nprog, dtype=torch.float64)
    for kind, name in KINDS.items():
        sel = items[(items[:, 1] > 0) & ((items[:, 0] >> 16) == kind)]
        if len(sel) == 0:
            continue
        wait = (sel[:, 2] - sel[:, 1]).double() / 1e3
        work = (sel[:, 3] - sel[:, 2]).double() / 1e3
        busy.index_add_(0, (sel[:, 0] & 0xFFFF).long(), work)
        out[name] = dict(
            n=len(sel),
            first_start_us=us(sel[:, 1].min().item()),
            last_end_us=us(sel[:, 3].max().item()),
            mean_wait_us=wait.mean().item(),
            max_wait_us=wait.max().item(),
            mean_work_us=work.mean().item(),
            max_work_us=work.max().item(),
        )
    out["busy_fraction_of_span"] = (busy.mean() / out["span_us"]).item()
    return out


def trace_text(t: dict) -> str:
    start = t["gemm_phase_start_us"]
    lines = [
        f"  trace: span {t['span_us']:.1f} us, GEMM phase starts {start[0]:.1f}-{start[1]:.1f} us, "
        f"programs busy {100 * t['busy_fraction_of_span']:.0f}% of it"
    ]
    for name in KINDS.values():
        if name in t:
            k = t[name]
            lines.append(
                f"  {name:9s} n={k['n']:5d} {k['first_start_us']:7.1f}..{k['last_end_us']:7.1f} us  "
                f"wait mean {k['mean_wait_us']:6.1f} max {k['max_wait_us']:6.1f}  work mean {k['mean_work_us']:6.1f} "
                f"max {k['max_work_us']:6.1f}"
            )
    return "\n".join(lines)


def host_path_us(call, n: int = 50) -> float:
    """The median host time of one call, from the Python call to its return with the kernel queued (the
    GPU idle before each): what the host adds to a span before the GPU can start."""
    times = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e6)
    torch.cuda.synchronize()
    return sorted(times)[n // 2]


def empty_launch_us() -> float:
    """The mean span of an empty Triton launch in this process, timed as a call is (fibmoe.probes): a
    process can draw a slow state that moves every small-T call in it alike (v35), so each T's rows
    carry the launch span measured just before them."""
    from fibmoe.probes import launch_spans

    spans = launch_spans("cuda", argparse.Namespace(warmup=10, iterations=50))["empty_triton_kernel"]
    return 1e3 * sum(spans) / len(spans)


def stage_times(call, flush: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
    """Each kernel of one call (by kernel name, in launch order): its GPU time and when it started and
    ended after the call's first kernel started (us; the median of 5 calls), from torch.profiler's CUDA
    activity, the L2 flushed before each call as the harness flushes it (`flush`: 256 MB zeroed): where
    a call's time goes, and how launches overlap (rung 3's PDL launches start under the kernel before)."""
    from torch.profiler import ProfilerActivity, profile

    call()
    torch.cuda.synchronize()
    runs = []
    for _ in range(5):
        if flush is not None:
            flush.zero_()
            torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            call()
            torch.cuda.synchronize()
        runs.append(kernel_timeline([(ev.name, ev.time_range.start, ev.time_range.end) for ev in prof.events()
                                     if ev.device_type == torch.autograd.DeviceType.CUDA]))  # fmt: skip
    names = [k for k in runs[0] if all(k in r for r in runs)]
    return {k: {f: sorted(r[k][f] for r in runs)[len(runs) // 2] for f in ("us", "start_us", "end_us")} for k in names}


def kernel_timeline(events: list[tuple[str, float, float]]) -> dict[str, dict[str, float]]:
    """(name, start, end) GPU activities of one call (us, any origin) -> by name, in start order: the
    summed time ("us"), the first start and the last end after the earliest start."""
    if not events:
        return {}
    t0 = min(start for _, start, _ in events)
    out = {}
    for name, start, end in sorted(events, key=lambda e: e[1]):
        k = out.setdefault(name, {"us": 0.0, "start_us": start - t0, "end_us": end - t0})
        k["us"] += end - start
        k["end_us"] = max(k["end_us"], end - t0)
    return out


def kernel_spans(ws, call_args, flush: torch.Tensor) -> dict[str, float]:
    """Each launch's span (us, by kernel name) in one call of large-T workspace `ws` (its fast path
    ready), from CUDA events recorded between the launches: the L2 flushed first as the harness flushes
    it, so every kernel runs on the L2 the kernels before it left, as in a timed call."""
    launches = list(ws.large_t_launches(*call_args))
    stream = ws.stream[0](ws.stream[1])
    events = [torch.cuda.Event(enable_timing=True) for _ in range(len(launches) + 1)]
    flush.zero_()
    events[0].record()
    for i, (kernel, kernel_args) in enumerate(launches):
        kernel.fast(stream, *kernel_args)
        events[i + 1].record()
    torch.cuda.synchronize()
    return {k.fn.__name__: 1e3 * events[i].elapsed_time(events[i + 1]) for i, (k, _) in enumerate(launches)}


def kernel_rounds(ready: list, rounds: int, spans_of_call, calls_per_round: int = 10) -> None:
    """Per-kernel spans of the large-T Gluon shapes of `ready` (`spans_of_call(ws, args)`: one call's
    spans by kernel name, `kernel_spans`), in `rounds` interleaved rounds (`round_order`) of
    `calls_per_round` calls each: every row gets `kernel_us` (kernel name -> the median over all its
    calls) and `kernel_round_us` (the per-round medians)."""
    shapes = []
    for row, runner, setup in ready:
        ws = next((w for w in runner.workspaces.values() if hasattr(w, "large_t_launches")), None)
        if "error" not in row and ws is not None and ws.stream is not None:
            shapes.append((row, ws, setup(), {}))
    for i in round_order(len(shapes), rounds):
        row, ws, args, spans = shapes[i]
        calls = [spans_of_call(ws, args) for _ in range(calls_per_round)]
        for name in calls[0]:
            per_call = [c[name] for c in calls]
            row.setdefault("kernel_round_us", {}).setdefault(name, []).append(middle(per_call))
            spans.setdefault(name, []).extend(per_call)
    for row, _, _, spans in shapes:
        row["kernel_us"] = {name: middle(v) for name, v in spans.items()}


def round_order(n_shapes: int, rounds: int) -> list[int]:
    """The order in which `rounds` rounds time n_shapes shapes in one process: round r starts at shape
    r mod n_shapes and goes round, so that no shape always runs first (the first timing in a process
    can be its slowest, v39) and each one's rounds are spread over the whole sweep of that T."""
    return [(r + k) % n_shapes for r in range(rounds) for k in range(n_shapes)] if n_shapes else []


def time_rounds(ready: list, rounds: int, bench) -> None:
    """Time each (row, runner, setup) of `ready` in `rounds` rounds (`round_order`): `bench(runner, setup)`
    returns one timing's spans in ms. Each row gets its rounds' means and medians (us) and, as its
    result, the median round's (`middle`); a shape whose timing raises gets an `error` and no result,
    the others go on."""
    for i in round_order(len(ready), rounds):
        row, runner, setup = ready[i]
        if "error" in row:
            continue
        try:
            times = bench(runner, setup)
            row.setdefault("round_means_us", []).append(1e3 * sum(times) / len(times))
            row.setdefault("round_medians_us", []).append(1e3 * sorted(times)[len(times) // 2])
        except Exception as e:  # noqa: BLE001 - one shape failing must not stop the sweep
            row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    for row, _, _ in ready:
        if "error" not in row:
            row["mean_us"] = middle(row["round_means_us"])
            row["median_us"] = middle(row["round_medians_us"])


# the solution's own shape of a T, the one every try is paired with: the tile table's at the fused path's T
# (where `--large-path` adds the large-T paths as tries), the Gluon path above it
BASELINES = ("table", "gluon-gemms")


def paired_summary(rows: list[dict]) -> list[dict]:
    """Each timed try against its T's baseline shape (BASELINES), round by round: the rounds are
    interleaved, so a round's difference cancels the machine's drift that moves every shape of that round
    together (the spread between rounds is larger than most effects, v52). Per try: the median and mean
    of (try - baseline) over the rounds and in how many the try was faster; the same for the sum of the
    kernels' spans where both have `--kernel-rounds`, and per kernel."""
    out = []
    for r in rows:
        timed = [b for b in rows if b["T"] == r["T"] and "error" not in b and "round_means_us" in b]
        base = next((b for name in BASELINES for b in timed if b["name"] == name), None)
        if base is None or r is base or r not in timed:
            continue
        diffs = [a - b for a, b in zip(r["round_means_us"], base["round_means_us"], strict=True)]
        p = dict(T=r["T"], name=r["name"], baseline=base["name"], call=_diff_stats(diffs))
        ka, kb = r.get("kernel_round_us"), base.get("kernel_round_us")
        if ka and kb and set(ka) == set(kb):
            per_kernel = {k: [a - b for a, b in zip(ka[k], kb[k], strict=True)] for k in ka}
            sums = [sum(d) for d in zip(*per_kernel.values(), strict=True)]
            p["kernel_sum"] = _diff_stats(sums)
            p["kernels"] = {k: _diff_stats(d) for k, d in per_kernel.items()}
        r["paired"] = p
        out.append(p)
    return out


def _diff_stats(diffs: list[float]) -> dict:
    # the median proper (an even count averages its two middle values): the lower middle would lean
    # every A/B toward "faster"
    return dict(median_us=statistics.median(diffs), mean_us=sum(diffs) / len(diffs), faster=sum(d < 0 for d in diffs),
                rounds=len(diffs))  # fmt: skip


def paired_text(p: dict) -> str:
    def one(st):
        spread = f"({st['mean_us']:+.1f} mean), faster in {st['faster']} of {st['rounds']}"
        return f"{st['median_us']:+.1f} us median {spread}"

    text = f"{p['T']:>5} {p['name']:14} against {p['baseline']}: call {one(p['call'])}"
    if "kernel_sum" in p:
        text += f"; kernels summed {one(p['kernel_sum'])}"
        text += "".join(f"\n{'':21}{k:24} {one(st)}" for k, st in p["kernels"].items())
    return text


def middle(xs: list[float]) -> float:
    """The median of a list (the lower middle of an even one: a value that was measured)."""
    return sorted(xs)[(len(xs) - 1) // 2]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", default="1,7,56,901")
    ap.add_argument("--try", dest="tries", action="append", default=[], help="NAME:field=value,...")
    large_help = "NAME:field=value,... above the fused T: rung 3 tiles, " + ", ".join(GLUON_FIELDS)
    ap.add_argument("--large-try", dest="large_tries", action="append", default=[], help=large_help)  # fmt: skip
    ap.add_argument("--large-path", action="store_true",
                    help="at the fused path's T, also time the two large-T paths (rung 3's kernels, the Gluon GEMMs)")
    ap.add_argument("--variant", default="r4-fused-persistent")
    ap.add_argument("--trace", action="store_true", help="also run each shape with its work-item trace on")
    ap.add_argument("--stages", action="store_true", help="also time each kernel of one call (torch.profiler)")
    ap.add_argument("--rounds", type=int, default=1, metavar="N",
                    help="time every shape of a T N times, interleaved in rotated order; mean us: the median round")
    ap.add_argument("--kernel-rounds", type=int, default=0, metavar="N",
                    help="large T: also time each kernel's span in a call, N rounds interleaved across the shapes")
    ap.add_argument("--stress", type=int, default=0, metavar="N",
                    help="before timing, N more calls on fresh inputs, each one checked")  # fmt: skip
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: at least 1")
    if args.kernel_rounds < 0:
        ap.error(f"--kernel-rounds {args.kernel_rounds}: 0 (off) or more")
    from flashinfer_bench.bench.timing import do_bench

    ds = dataset.load(DEFINITION)
    fn = variants.build(variants.pack(variants.resolve([args.variant])[0], DEFINITION), ds.definition)
    mod = variants.module_of(fn)
    tiles_mod = sys.modules[mod.__package__ + ".tiles"]
    cap = mod.capability(torch.device("cuda"))  # the solution's own reading (x 10: 90 on an H200)
    tries = [("table", {})] + [parse_try(s, tiles_mod.Tiles) for s in args.tries]
    tile_table = sys.modules[mod.__package__ + ".tile_table"]
    large_tries = [parse_try(s, tile_table.Tiles, GLUON_FIELDS) for s in args.large_tries]
    if args.trace:
        tries += [(name + "+trace", {**fields, "trace": True}) for name, fields in tries]
    rows = []
    by_t = {w.workload.axes["seq_len"]: w for w in ds.workloads}
    Ts = [int(x) for x in args.T.split(",")]
    if any(T not in by_t for T in Ts):
        ap.error(f"--T {args.T}: the contest's T are {', '.join(map(str, sorted(by_t)))}")
    for T in Ts:
        w = by_t[T]
        torch.manual_seed(T)
        inp = inputs.generate(ds, w, "cuda", "contest", routing=dataset.routing_tensors(ds, w))
        ref32 = reference.forward(*inp)
        large = T > tiles_mod.MAX_FUSED_T
        base = None if large else tiles_mod.tiles_for(T, cap)
        launch_us = empty_launch_us()
        ready = []  # (row, runner, setup) of every shape that computed the right layer
        forced = [(name, {**fields, "fused_max_t": 0}) for name, fields in LARGE_T_PATHS] if args.large_path else []
        for name, fields in LARGE_T_PATHS + large_tries if large else tries + forced:
            row = dict(T=T, uuid=w.workload.uuid, name=name, fields=fields, empty_launch_us=launch_us)
            rows.append(row)
            try:
                if (name, fields) in LARGE_T_PATHS + forced:
                    runner = mod.Runner(**fields)
                elif large:  # rung 3's tile fields into the large-T workspace's tiles, the rest its own arguments
                    ws_args = {k: v for k, v in fields.items() if k in GLUON_FIELDS}
                    tiles = dataclasses.replace(tile_table.tiles_for(T, cap),
                                                **{k: v for k, v in fields.items() if k not in GLUON_FIELDS})
                    runner = mod.Runner(large_t_args=dict(ws_args, tiles=tiles))  # fmt: skip
                else:
                    runner = mod.Runner(dataclasses.replace(base, **fields))
                out, rel, nan = checked_call(runner, inp, ref32)
                row.update(rel_l2=rel, nan=nan)
                again = torch.full_like(out, float("nan"))
                runner(*inp, again)
                row["deterministic"] = bool(torch.equal(out, again))
                problem = accuracy_problem(row["rel_l2"], row["nan"], row["deterministic"])
                if args.stress and not problem:

                    def fresh(i, T=T, w=w):
                        torch.manual_seed(1000 * T + i + 1)
                        x = inputs.generate(ds, w, "cuda", "contest", routing=dataset.routing_tensors(ds, w))
                        return x, reference.forward(*x)

                    problem = stress_problem(runner, fresh, args.stress)
                    row["stress_calls"] = args.stress
                if problem:  # a wrong kernel is not timed; the sweep exits non-zero
                    raise AssertionError(f"wrong result: {problem}")
                ws = next(iter(runner.workspaces.values()), None)
                ck = ws.kernel.ck if hasattr(ws, "kernel") else None  # the fused path's one kernel
                row.update(grid=ws.kernel.grid[0] if ck else 0, regs=getattr(ck, "n_regs", None),
                           spills=getattr(ck, "n_spills", None), smem=ck.metadata.shared if ck else None)  # fmt: skip
                if fields.get("trace"):
                    row["trace"] = trace_summary(ws.trace.cpu(), ws.kernel.consts["MAX_ITEMS"], ws.kernel.grid[0])
                    print(trace_text(row["trace"]), flush=True)
                dst = torch.empty_like(out)

                def setup(inp=inp, dst=dst):
                    return [a.clone() if isinstance(a, torch.Tensor) else a for a in inp] + [dst]

                ready.append((row, runner, setup))
            except Exception as e:  # noqa: BLE001 - one shape failing must not stop the sweep
                row["error"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
                print(json.dumps(row), flush=True)
        time_rounds(ready, args.rounds, lambda runner, setup: do_bench(
            lambda a, f=runner: f(*a), warmup=10, rep=50, setup=setup, return_mode="all"))  # fmt: skip
        flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")  # do_bench's: 256 MB of zeros
        if (large or forced) and args.kernel_rounds:
            kernel_rounds(ready, args.kernel_rounds, functools.partial(kernel_spans, flush=flush))
        for row, runner, setup in ready:
            if "error" not in row:  # a shape whose timing raised keeps its error row
                row["host_us"] = host_path_us(lambda a=setup(), f=runner: f(*a))
                row["queued_us"] = 1e3 * statistics.mean(queued_spans(runner, setup(), "cuda", 50))
                if args.stages:
                    try:
                        row["stages_us"] = stage_times(lambda a=setup(), f=runner: f(*a), flush)
                        stages = ", ".join(f"{k} {v['us']:.1f} ({v['start_us']:.1f}..{v['end_us']:.1f})"
                                           for k, v in row["stages_us"].items())  # fmt: skip
                    except Exception as e:  # noqa: BLE001 - the profiler is optional, the timing above is not
                        row["stages_us"] = {"error": f"{type(e).__name__}: {e}"[:200]}
                        stages = row["stages_us"]["error"]
                    print(f"  stages (us, from..to after the first kernel's start): {stages}", flush=True)
            print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
    head = f"{'T':>5} {'shape':14} {'mean us':>9} {'median us':>9} {'host us':>7} {'queued':>6} {'launch':>6}"
    head += f" {'rel L2':>9}"
    head += " grid regs spill smem"
    print(f"\n{head}  fields")
    for r in rows:
        if "error" in r:
            print(f"{r['T']:>5} {r['name']:14} ERROR {r['error']}")
            continue
        print(
            f"{r['T']:>5} {r['name']:14} {r['mean_us']:9.1f} {r['median_us']:9.1f} {r['host_us']:7.1f} "
            f"{r['queued_us']:6.1f} {r['empty_launch_us']:6.1f} "
            f"{r['rel_l2']:9.2e} {r['grid']:4d} "
            f"{r['regs']} {r['spills']} {r['smem']}  {r['fields']}"
            + (f"  rounds {' '.join(f'{m:.1f}' for m in r['round_means_us'])}" if args.rounds > 1 else "")
        )
    paired = paired_summary(rows) if args.rounds > 1 else []
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "r4_tiles_sweep.json").write_text(json.dumps(rows, indent=1))
    for r in rows:
        for name, us in r.get("kernel_us", {}).items():
            per_round = " ".join(f"{x:.1f}" for x in r["kernel_round_us"][name])
            print(f"{r['T']:>5} {r['name']:14} {name:24} {us:8.1f} us  rounds {per_round}")
    if paired:
        print("\npaired rounds (try - baseline, round by round):")
        for p in paired:
            print(paired_text(p))
    failed = sum("error" in r for r in rows)
    if failed:
        print(f"{failed} of {len(rows)} shapes failed (ERROR rows above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
