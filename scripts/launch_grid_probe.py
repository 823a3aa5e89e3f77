"""What a launch costs on the GPU's side, by grid and shared memory (GPU only): where rung 4's T = 1 call
spends the ~12 us between its GPU-side span (64.4 us) and its programs' own traced span (52.5 us, v80).

    python scripts/launch_grid_probe.py [--T 1,7]

Each launch is timed queued behind a busy GPU (`fibmoe.runner.queued_spans`: the L2 flushed as the
harness flushes it, a spin kernel, then the events): the GPU's side of a span alone, no host time in it.
The launches: a stamp kernel (each CTA writes `%globaltimer` at its start, nothing else; the shared memory
of a dot whose loop runs zero times) on grids of 1, 132 and 264 CTAs with no shared memory, 80 KB (two
CTAs an SM, as the fused kernel's 104 KB at T <= 128) and 64 KB (one, 8 warps). Then, bracketed by one-CTA
stamps in the same queued span (stamp, kernel, stamp), each stamp grid and rung 4's fused kernel with
its trace on: from the first stamp to the kernel's first CTA (the launch reaching the SMs), the spread
of its CTAs' starts, and from its last exit to the closing stamp (the drain and the next launch). A
table on stdout, JSON under $OUT.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fibmoe import dataset, inputs, variants  # noqa: E402
from fibmoe.runner import queued_spans  # noqa: E402

DEFINITION = "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
# (name, CTAs, (BM, BN) of the dead dot: its operands' shared memory, warps)
GRIDS = [("1 cta", 1, (16, 16), 4), ("132 ctas", 132, (16, 16), 4), ("264 ctas", 264, (16, 16), 4),
         ("264 ctas 80KB", 264, (128, 512), 4), ("132 ctas 64KB", 132, (256, 128), 8)]  # fmt: skip


@triton.jit
def stamp_kernel(stamps_ptr, a_ptr, n, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """Each CTA stores the global nanosecond timer at its start. The dot's loop runs n = 0 times: it only
    gives the kernel the shared memory of its operand tiles, as a real kernel's pipeline would."""
    t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    tl.store(stamps_ptr + tl.program_id(0), t)
    rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
    acc = tl.zeros((BM, BN), tl.float32)
    for k in range(n):
        a = tl.load(a_ptr + rm[:, None] * BK + rk[None, :] + k)
        b = tl.load(a_ptr + rk[:, None] * BN + rn[None, :] + k)
        acc = tl.dot(a, b, acc)
    if n > 0:
        tl.store(stamps_ptr + rm[:, None] * BN + rn[None, :], acc.to(tl.int64))


class Stamp:
    def __init__(self, ctas, bm_bn, warps, device):
        self.ctas, self.warps, (self.bm, self.bn) = ctas, warps, bm_bn
        self.stamps = torch.zeros(max(ctas, self.bm * self.bn), dtype=torch.int64, device=device)
        self.a = torch.zeros(1 << 16, dtype=torch.float8_e4m3fn, device=device)
        ck = self()
        self.smem = ck.metadata.shared

    def __call__(self, *_):
        return stamp_kernel[(self.ctas,)](self.stamps, self.a, 0, BM=self.bm, BN=self.bn, BK=128, num_warps=self.warps)


def bracketed(launch, first_start_last_end, marks, iterations=20):
    """`launch()` between two one-CTA stamps (`marks`), the L2 flushed and the call queued behind a busy GPU
    (as `queued_spans` times it): per call (us) the time from the opening stamp to the kernel's first CTA
    start, its CTAs' start spread, and its last end to the closing stamp. `first_start_last_end()` reads
    (first start, last start, last end) in ns after a call."""
    from flashinfer_bench.bench.timing import _clear_cache, _get_empty_cache_for_benchmark

    from fibmoe.runner import BUSY_CYCLES

    cache = _get_empty_cache_for_benchmark("cuda")
    out = []
    for _ in range(iterations):
        _clear_cache(cache)  # the L2 as the harness leaves it (dirty), as in the queued spans
        torch.cuda.synchronize()
        torch.cuda._sleep(BUSY_CYCLES)
        marks[0]()
        launch()
        marks[1]()
        torch.cuda.synchronize()
        first, last_start, last_end = first_start_last_end()
        m0, m1 = marks[0].stamps[0].item(), marks[1].stamps[0].item()
        out.append(((first - m0) / 1e3, (last_start - first) / 1e3, (m1 - last_end) / 1e3))
    return [statistics.median(x[i] for x in out) for i in range(3)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", default="1,7")
    args = ap.parse_args()
    ds = dataset.load(DEFINITION)
    fn = variants.build(variants.pack(variants.resolve(["r4-fused-persistent"])[0], DEFINITION), ds.definition)
    mod = variants.module_of(fn)
    tiles_mod = sys.modules[mod.__package__ + ".tiles"]
    # the fused kernel's workloads: the one launch this probes
    by_t = {T: w for w in ds.workloads if (T := w.workload.axes["seq_len"]) <= tiles_mod.MAX_FUSED_T}
    try:
        Ts = [int(x) for x in args.T.split(",")]
    except ValueError:
        Ts = [None]
    if any(T not in by_t for T in Ts):
        ap.error(f"--T {args.T}: the fused kernel's contest T are {', '.join(map(str, sorted(by_t)))}")
    if not torch.cuda.is_available():
        ap.error("needs a CUDA GPU (it times launches on one)")
    dev = "cuda"
    rows = []
    marks = (Stamp(1, (16, 16), 4, dev), Stamp(1, (16, 16), 4, dev))
    for name, ctas, bm_bn, warps in GRIDS:
        s = Stamp(ctas, bm_bn, warps, dev)
        gpu = 1e3 * statistics.mean(queued_spans(s, [], dev, 50))

        def read(s=s):
            st = s.stamps[: s.ctas]
            return st.min().item(), st.max().item(), st.max().item()

        to_first, spread, to_next = bracketed(s, read, marks)
        row = dict(name=name, ctas=ctas, smem=s.smem, warps=warps, gpu_side_us=gpu)
        rows.append(dict(row, launch_to_first_cta_us=to_first, cta_start_spread_us=spread, last_to_next_us=to_next))

    cap = mod.capability(torch.device(dev))
    for T in Ts:
        w = by_t[T]
        torch.manual_seed(T)
        inp = inputs.generate(ds, w, dev, "contest", routing=dataset.routing_tensors(ds, w))
        out = torch.empty_like(inp[2], dtype=torch.bfloat16)  # [T, H]
        for trace in (False, True):
            runner = mod.Runner(dataclasses.replace(tiles_mod.tiles_for(T, cap), trace=trace))
            runner(*inp, out)
            ws = next(iter(runner.workspaces.values()))
            gpu = 1e3 * statistics.mean(queued_spans(runner, [*inp, out], dev, 50))
            ck = ws.kernel.ck
            row = dict(name=f"r4 T={T}" + (" traced" if trace else ""), ctas=ws.kernel.grid[0], smem=ck.metadata.shared,
                       warps=ck.metadata.num_warps, gpu_side_us=gpu)  # fmt: skip
            if trace:
                items, nprog = ws.kernel.consts["MAX_ITEMS"], ws.kernel.grid[0]

                def read(ws=ws, items=items, nprog=nprog):
                    progs = ws.trace.view(-1, 4)[items : items + nprog]
                    return progs[:, 1].min().item(), progs[:, 1].max().item(), progs[:, 3].max().item()

                def call(runner=runner, inp=inp, out=out):
                    runner(*inp, out)

                to_first, spread, to_next = bracketed(call, read, marks)
                first, _, last = read()
                row.update(launch_to_first_cta_us=to_first, cta_start_spread_us=spread, last_to_next_us=to_next,
                           programs_span_us=(last - first) / 1e3)  # fmt: skip
            rows.append(row)
    print(f"{'launch':22} {'ctas':>4} {'smem':>7} {'warps':>5} {'GPU side':>8} {'->1st CTA':>9} {'spread':>7} "
          f"{'->next':>7} {'programs':>8}")  # fmt: skip
    for r in rows:
        f = lambda k, r=r: f"{r[k]:.1f}" if k in r else "-"  # noqa: E731
        print(f"{r['name']:22} {r['ctas']:4d} {r['smem']:7d} {r['warps']:5d} {r['gpu_side_us']:8.1f} "
              f"{f('launch_to_first_cta_us'):>9} {f('cta_start_spread_us'):>7} {f('last_to_next_us'):>7} "
              f"{f('programs_span_us'):>8}")  # fmt: skip
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "launch_grid_probe.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
