"""Rung 2 on a GPU in one device call (not packed: sub-folders of a variant are not sources).

  . scripts/device_env.sh && python3 scripts/dev/r2_device.py

1. host-sync check of one call (torch's sync debug mode), and of the shared grouping helper;
2. every contest workload x 3 trials: fresh contest-style inputs, output poisoned with NaN,
   judged against fibmoe.reference on the GPU (official rule, relative L2 against the fp32
   result, exact zeros for tokens with no local expert), then timed with flashinfer-bench's
   do_bench (10 warm-up, 50 timed, L2 flushed, args cloned before each call, median);
3. rung 1 timed on the small workloads (and T=901 with few repetitions);
4. a small sweep of tile configs on 4 workloads; 5. a torch.profiler breakdown per kernel.
Everything goes to $OUT (r2_log.txt, r2_results.json, r2_profile.txt); sections 3-5 are
skipped once R2_BUDGET seconds have passed.

R2_MODE=ncu: only two calls (T=80, then T=14107), for running under Nsight Compute.
R2_DRY=1: a rehearsal on the CPU (Triton interpreter, small definition, wall-clock timing).
"""

import importlib.util
import json
import os
import statistics
import sys
import time
import warnings

import torch
from flashinfer_bench import BenchmarkConfig
from flashinfer_bench.bench.timing import do_bench
from flashinfer_bench.bench.utils import compute_error_stats

from fibmoe import dataset, inputs, reference, variants
from fibmoe.geometry import CONTEST, SMALL

OUT = os.environ.get("OUT", "/tmp/r2_out")
os.makedirs(OUT, exist_ok=True)
T_START = time.time()
BUDGET = float(os.environ.get("R2_BUDGET", "400"))
OFFICIAL = BenchmarkConfig(atol=1.0, rtol=0.3, required_matched_ratio=0.9)
BW, FP8 = 3.0e12, 1.4e15  # H100 figures of TRACK_A.md section 4
DRY = os.environ.get("R2_DRY") == "1"
DEV, G = ("cpu", SMALL) if DRY else ("cuda", CONTEST)
LOG = open(os.path.join(OUT, "r2_log.txt"), "w")
RESULTS = {"device": None, "workloads": [], "r1": {}, "sweep": [], "sync": {}}


def say(*parts):
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.write(line + "\n")
    LOG.flush()


def elapsed():
    return time.time() - T_START


def clone(args):
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def bench(fn, args, warmup=10, rep=50):
    if DRY:
        fn(*clone(args))
        t0 = time.perf_counter()
        fn(*clone(args))
        return (time.perf_counter() - t0) * 1e3
    return float(do_bench(lambda a: fn(*a), warmup=warmup, rep=rep, setup=lambda: clone(args), return_mode="median"))


def floor_of(logits, bias, offset):
    experts, _ = reference.route(logits, bias, 1.0)
    local = experts - offset
    local = local[(local >= 0) & (local < G.num_local_experts)]
    active, rows = int(torch.unique(local).numel()), int(local.numel())
    n_tokens = logits.shape[0]
    nbytes = active * G.weight_bytes_per_expert() + n_tokens * G.bytes_per_token()
    flops = rows * G.flops_per_local_row()
    return active, rows, max(nbytes / BW, flops / FP8) * 1e6, "memory" if nbytes / BW >= flops / FP8 else "compute"


def judge(out, inp):
    """Verdict against the fp32 reference: the official rule, relative L2, exact zeros."""
    ref32 = reference.forward(*inp)
    ref = ref32.to(torch.bfloat16)
    max_abs, max_rel, exceeds, matched = compute_error_stats(out, ref, OFFICIAL)
    finite = bool(torch.isfinite(out.float()).all())
    rel = float((out.float() - ref32).norm() / ref32.norm().clamp_min(1e-30))
    experts, _ = reference.route(inp[0], inp[1], inp[9])
    loc = experts - int(inp[8])
    none_local = ~((loc >= 0) & (loc < G.num_local_experts)).any(1)
    zeros_ok = bool((out[none_local] == 0).all())
    ok = finite and zeros_ok and not exceeds
    return dict(
        passed=ok,
        rel_l2=rel,
        matched=matched,
        max_abs=max_abs,
        finite=finite,
        zeros_ok=zeros_ok,
        no_local_tokens=int(none_local.sum()),
    )


def sync_check(fn, inp):
    out = torch.empty(inp[2].shape[0], inp[2].shape[1], dtype=torch.bfloat16, device=DEV)
    fn(*inp, out)
    torch.cuda.synchronize()
    res = {}
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(*inp, out)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    res["r2_call_sync_warnings"] = [str(w.message)[:160] for w in got if "ynchroniz" in str(w.message)]
    # the shared grouping helper, for the record (rung 2 does not use it)
    spec = importlib.util.spec_from_file_location("grouping", "variants/_shared/grouping.py")
    grouping = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grouping)
    experts, weights = reference.route(inp[0], inp[1], inp[9])
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            grouping.group_by_local_expert(experts, weights, int(inp[8]), G.num_local_experts)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    res["shared_grouping_sync_warnings"] = [str(w.message)[:160] for w in got if "ynchroniz" in str(w.message)]
    return res


def main():
    import triton

    if DRY:
        RESULTS["device"] = dict(name="cpu (dry run)", torch=torch.__version__, triton=triton.__version__)
    else:
        props = torch.cuda.get_device_properties(0)
        RESULTS["device"] = dict(
            name=props.name, sms=props.multi_processor_count, torch=torch.__version__, triton=triton.__version__
        )
    say("device", RESULTS["device"])
    ds = dataset.load(G.name)
    r2 = variants.build(variants.pack(variants.resolve(["r2-triton-dequant"])[0], ds.definition.name), ds.definition)
    r1 = variants.build(variants.pack(variants.resolve(["r1-torch"])[0], ds.definition.name), ds.definition)
    r2mod = variants.module_of(r2)
    traces = sorted(ds.workloads, key=lambda t: t.workload.axes["seq_len"])
    routing = {t.workload.uuid: dataset.routing_tensors(ds, t) for t in traces}
    if os.environ.get("R2_MODE") == "ncu":
        for T in (16, 64) if DRY else (80, 14107):
            tr = next(t for t in traces if t.workload.axes["seq_len"] == T)
            torch.manual_seed(4)
            inp = inputs.generate(ds, tr, DEV, "contest", routing=routing[tr.workload.uuid])
            r2(*inp, torch.empty(T, G.hidden_size, dtype=torch.bfloat16, device=DEV))
            sync()
            say(f"ncu mode: T={T} called once")
        return

    # 1. host syncs
    if not DRY:
        t80 = next(t for t in traces if t.workload.axes["seq_len"] == 80)
        torch.manual_seed(0)
        RESULTS["sync"] = sync_check(r2, inputs.generate(ds, t80, DEV, "contest", routing=routing[t80.workload.uuid]))
        say("sync check:", json.dumps(RESULTS["sync"]))

    # 2. correctness + official timing
    heads = ("T", "off", "act", "rows", "floor_us", "r2_us", "x_floor", "relL2", "matched")
    say(" ".join(f"{h:>{w}}" for h, w in zip(heads, (6, 4, 3, 6, 9, 9, 7, 9, 8), strict=True)), "pass")
    for n, tr in enumerate(traces):
        wl = tr.workload
        T, off = wl.axes["seq_len"], wl.inputs["local_expert_offset"].value
        r = routing[wl.uuid]
        active, rows, floor_us, bound = floor_of(r["routing_logits"].to(DEV), r["routing_bias"].to(DEV), off)
        trials, times = [], []
        for trial in range(3):
            torch.manual_seed(1000 * n + trial)
            inp = inputs.generate(ds, tr, DEV, "contest", routing=r)
            out = torch.full((T, G.hidden_size), float("nan"), dtype=torch.bfloat16, device=DEV)
            r2(*inp, out)
            sync()
            trials.append(judge(out, inp))
            times.append(bench(r2, inp + [torch.empty_like(out)]))
            del inp, out
            empty_cache()
        lat = statistics.mean(times) * 1e3
        rec = dict(
            uuid=wl.uuid,
            seq_len=T,
            offset=off,
            active_experts=active,
            local_rows=rows,
            floor_us=floor_us,
            bound=bound,
            r2_us=lat,
            r2_trial_us=[t * 1e3 for t in times],
            x_floor=lat / floor_us,
            passed=all(v["passed"] for v in trials),
            rel_l2=max(v["rel_l2"] for v in trials),
            matched=min(v["matched"] for v in trials),
            trials=trials,
        )
        RESULTS["workloads"].append(rec)
        say(
            f"{T:6d} {off:4d} {active:3d} {rows:6d} {floor_us:9.1f} {lat:9.1f} {lat / floor_us:7.2f}",
            f"{rec['rel_l2']:9.2e} {rec['matched']:8.5f} {rec['passed']}  [{elapsed():.0f}s]",
        )
        dump()

    # 3. rung 1 for comparison
    for tr in traces:
        T = tr.workload.axes["seq_len"]
        if T > 901 or elapsed() > BUDGET:
            continue
        torch.manual_seed(9)
        inp = inputs.generate(ds, tr, DEV, "contest", routing=routing[tr.workload.uuid])
        out = torch.empty(T, G.hidden_size, dtype=torch.bfloat16, device=DEV)
        args = (2, 5) if T == 901 else (3, 20)
        RESULTS["r1"][tr.workload.uuid] = bench(r1, inp + [out], *args) * 1e3
        say(f"r1 T={T} {RESULTS['r1'][tr.workload.uuid]:.1f} us (warmup/rep {args})  [{elapsed():.0f}s]")
        del inp, out
        empty_cache()
    dump()

    # 4. tile-config sweep
    sweep = {
        (7 if DRY else 1): [
            "small",
            dict(bm=16, bn1=16, bn2=32, bk=128, w1=4, s1=4, w2=4, s2=4, per_sm=8, dot="bf16"),
            dict(bm=16, bn1=32, bn2=64, bk=128, w1=4, s1=4, w2=4, s2=4, per_sm=16, dot="bf16"),
        ],
        (16 if DRY else 80): [
            "small",
            "medium",
            dict(bm=16, bn1=64, bn2=128, bk=64, w1=4, s1=4, w2=4, s2=4, per_sm=8, dot="bf16"),
        ],
        (40 if DRY else 901): [
            "medium",
            "large",
            dict(bm=32, bn1=64, bn2=128, bk=64, w1=4, s1=4, w2=4, s2=4, per_sm=4, dot="bf16"),
            dict(bm=64, bn1=32, bn2=64, bk=64, w1=4, s1=3, w2=4, s2=3, per_sm=4, dot="fp32"),
        ],
        (64 if DRY else 14107): [
            "large",
            dict(bm=64, bn1=128, bn2=128, bk=64, w1=8, s1=4, w2=8, s2=4, per_sm=2, dot="bf16"),
            dict(bm=128, bn1=64, bn2=64, bk=32, w1=8, s1=3, w2=8, s2=3, per_sm=2, dot="fp32"),
        ],
    }
    for T, cfgs in sweep.items():
        if elapsed() > BUDGET:
            say("sweep skipped past the budget")
            break
        tr = next(t for t in traces if t.workload.axes["seq_len"] == T)
        torch.manual_seed(3)
        inp = inputs.generate(ds, tr, DEV, "contest", routing=routing[tr.workload.uuid])
        base = torch.empty(T, G.hidden_size, dtype=torch.bfloat16, device=DEV)
        r2(*inp, base)
        for cfg in cfgs:
            r2mod.CONFIG_OVERRIDE = r2mod.CONFIGS[cfg] if isinstance(cfg, str) else cfg
            try:
                out = torch.full_like(base, float("nan"))
                r2(*inp, out)
                sync()
                diff = float((out.float() - base.float()).norm() / base.float().norm())
                us = bench(r2, inp + [out], 5, 20) * 1e3
                RESULTS["sweep"].append(dict(seq_len=T, config=cfg, us=us, rel_diff_vs_default=diff))
                say(f"sweep T={T} {cfg}: {us:.1f} us, rel diff vs default {diff:.2e}  [{elapsed():.0f}s]")
            except Exception as e:  # a config that does not fit (shared memory, say) is a result too
                RESULTS["sweep"].append(dict(seq_len=T, config=cfg, error=repr(e)[:300]))
                say(f"sweep T={T} {cfg}: FAILED {repr(e)[:200]}")
            finally:
                r2mod.CONFIG_OVERRIDE = None
        del inp, base
        empty_cache()
    dump()

    # 5. profile
    if elapsed() < BUDGET + 60 and not DRY:
        from torch.profiler import ProfilerActivity, profile

        with open(os.path.join(OUT, "r2_profile.txt"), "w") as f:
            for T in (1, 80, 901, 14107):
                tr = next(t for t in traces if t.workload.axes["seq_len"] == T)
                torch.manual_seed(4)
                inp = inputs.generate(ds, tr, DEV, "contest", routing=routing[tr.workload.uuid])
                out = torch.empty(T, G.hidden_size, dtype=torch.bfloat16, device=DEV)
                for _ in range(3):
                    r2(*inp, out)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(10):
                    r2(*inp, out)
                torch.cuda.synchronize()
                warm_us = (time.perf_counter() - t0) / 10 * 1e6
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    for _ in range(5):
                        r2(*inp, out)
                    torch.cuda.synchronize()
                try:
                    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30)
                except Exception:
                    table = prof.key_averages().table(sort_by="self_device_time_total", row_limit=30)
                f.write(f"==== T={T} (5 calls; warm back-to-back wall time per call {warm_us:.1f} us) ====\n{table}\n")
                say(f"profile T={T}: back-to-back wall {warm_us:.1f} us/call")
                del inp, out
                empty_cache()
    dump()

    # summary
    say("\nSUMMARY (H100; latency = mean over 3 trials of the median of 50 timed calls)")
    heads = ("T", "off", "act", "rows", "floor_us", "r2_us", "x_floor", "r1_us", "r1/r2", "relL2", "matched")
    say(
        f"{'uuid':8s}",
        " ".join(f"{h:>{w}}" for h, w in zip(heads, (6, 4, 3, 6, 9, 9, 7, 10, 7, 9, 8), strict=True)),
        "pass",
    )
    for rec in sorted(RESULTS["workloads"], key=lambda r: r["seq_len"]):
        r1us = RESULTS["r1"].get(rec["uuid"])
        r1col = f"{r1us:10.1f} {r1us / rec['r2_us']:7.1f}" if r1us else f"{'-':>10} {'-':>7}"
        say(
            f"{rec['uuid'][:8]} {rec['seq_len']:6d} {rec['offset']:4d} {rec['active_experts']:3d} "
            f"{rec['local_rows']:6d} "
            f"{rec['floor_us']:9.1f} {rec['r2_us']:9.1f} {rec['x_floor']:7.2f} "
            f"{r1col} "
            f"{rec['rel_l2']:9.2e} {rec['matched']:8.5f} {rec['passed']}"
        )
    npass = sum(r["passed"] for r in RESULTS["workloads"])
    say(f"passed {npass}/{len(RESULTS['workloads'])} workloads (3 trials each); total {elapsed():.0f}s")


def sync():
    if not DRY:
        torch.cuda.synchronize()


def empty_cache():
    if not DRY:
        torch.cuda.empty_cache()


def dump():
    with open(os.path.join(OUT, "r2_results.json"), "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)


if __name__ == "__main__":
    try:
        main()
    finally:
        dump()
    ok = RESULTS["workloads"] and all(r["passed"] for r in RESULTS["workloads"])
    sys.exit(0 if ok or os.environ.get("R2_MODE") == "ncu" else 1)
