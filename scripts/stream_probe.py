"""How fast can one persistent plain-Triton loop stream FP8 weight tiles at tiny T? (GPU; issue 7)

Rung 4's fused kernel streams W1 at ~23 GB/s per SM at T = 1 and W2 at ~16, where the chip's 4.2 TB/s
needs ~32 (NOTES.md, v21-v27). This probe isolates GEMM1's inner loop: a persistent grid whose items are
(128 weight rows, a run of KC 128-wide K blocks); each step loads a [128, 128] fp8 weight tile and a
[128, BM] activation tile, runs the swapped dot and applies the two block scales, as
`_shared/gemm1_tile.w1_tile` does. Shapes differ only in how the weight tile is loaded (pointers: cp.async
from every thread; `tma`: host tensor descriptors for both operands, one bulk copy each), in Triton's
warp specialization of the K loop (`ws`, with `tma`: a partition that only issues the loads) and in
stages, warps, scales and KC, so the per-SM rate each reaches says what the fused kernel's loop could
reach.

    python scripts/stream_probe.py [--rows 12288] [--try NAME:tma=1,ws=1,stages=4,warps=4,scales=1,kc=8,ctas=1 ...]
    python scripts/stream_probe.py --try gluon6:gluon=1,stages=6      # the hand-written load-only producer

Timed with the L2 flushed as the harness flushes it (flashinfer-bench's do_bench writes zeros to a
256 MB buffer), and again with the L2 flushed by reading that buffer instead: the official flush leaves
the L2 full of dirty lines, whose write-back shares the DRAM with the kernel's reads. The mean of 100
spans, each launch queued behind its flush (host time out of the span, unlike the harness). One table
row per shape; each shape's result is checked against a torch fp32 product
first (a wrong loop is not timed).
"""

import argparse
import functools
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

H = 7168  # the contest's hidden size: the K of GEMM1
BK = 128
BN = 128


@triton.jit
def stream_kernel(w_ptr, w_desc, ws_ptr, a_ptr, a_desc, as_ptr, out_ptr, n_items, R, BM: tl.constexpr, KC: tl.constexpr,
                  TMA: tl.constexpr, SCALES: tl.constexpr, STAGES: tl.constexpr, K_FIRST: tl.constexpr,
                  CONTIG: tl.constexpr, DOT: tl.constexpr, EVICT: tl.constexpr, WS: tl.constexpr):  # fmt: skip
    """Item i: weight tile rows rb * 128 .. +128, K blocks kc * KC .. +KC, with rb = i % NRB and
    kc = i // NRB (K_FIRST: kc = i % NKC, rb = i // NKC, so programs running together read neighbouring
    K blocks of the same rows): out[i] = the scaled sum over those K blocks of W_tile @ A_tile^T
    ([128, BM], fp32). CONTIG: tile (rb, kb) is instead the 16 KB at (rb * 56 + kb) * 16384 (every tile
    one contiguous run: how DRAM locality alone moves the rate). DOT = 0: row sums of the tile instead
    of the dot (no tensor core). EVICT: the weight loads' L2 eviction policy ("" or "evict_first"). WS:
    Triton's warp specialization of the K loop (a partition that only issues the loads; with TMA). It
    compiles for sm_90 (12 warps, 168 registers, no spill) and computes the right items in the CPU
    interpreter, but on the H200 (v42) the probe timed out at its first such shape in both runs (110 s,
    where the kernel compiles offline in seconds): most likely a hang; not diagnosed."""
    NKB: tl.constexpr = 7168 // 128
    NKC: tl.constexpr = NKB // KC
    NRB = R // 128
    rn = tl.arange(0, 128)
    kk = tl.arange(0, 128)
    tok = tl.arange(0, BM)
    for item in range(tl.program_id(0), n_items, tl.num_programs(0)):  # a for, not a while: Triton's warp
        # specialization pass takes no loop nested in an scf.while
        if K_FIRST:
            rb = item // NKC
            kb0 = (item % NKC) * KC
        else:
            rb = item % NRB
            kb0 = (item // NRB) * KC
        acc = tl.zeros((128, BM), tl.float32)
        for ki in tl.range(0, KC, num_stages=STAGES, warp_specialize=WS):
            kb = kb0 + ki
            if TMA:
                if CONTIG:
                    w = w_desc.load([(rb * NKB + kb) * 128, 0])
                else:
                    w = w_desc.load([rb * 128, kb * 128])
            elif CONTIG:
                w = tl.load(w_ptr + (rb * NKB + kb).to(tl.int64) * 16384 + rn[:, None] * 128 + kk[None, :],
                            eviction_policy=EVICT)  # fmt: skip
            else:
                w = tl.load(w_ptr + (rb * 128 + rn).to(tl.int64)[:, None] * 7168 + kb * 128 + kk[None, :],
                            eviction_policy=EVICT)  # fmt: skip
            if TMA:  # both operands by TMA (Triton's warp specialization on sm_90 takes TMA loads only)
                a = a_desc.load([0, kb * 128]).T  # [BK, BM]
            else:
                a = tl.load(a_ptr + tok[None, :] * 7168 + kb * 128 + kk[:, None])  # [BK, BM]
            if DOT:
                part = tl.dot(w, a)
            else:  # the tile's row sums in every column: the same bytes, no tensor core
                part = tl.broadcast_to(tl.sum(w.to(tl.float32), axis=1)[:, None], (128, BM))
            if SCALES:
                s = tl.load(ws_ptr + rb * NKB + kb) * tl.load(as_ptr + kb * BM + tok)
                acc += part * s[None, :]
            else:
                acc += part
        tl.store(out_ptr + item * (128 * BM) + rn[:, None] * BM + tok[None, :], acc)  # < 2**31 elements


@triton.jit
def tile_at(j, KC: tl.constexpr, NRB, step):
    """(row block, K block) of a program's j-th K block in register_stream_kernel (its items in
    stream_kernel's plain order, KC blocks each)."""
    item = tl.program_id(0) + (j // KC) * step
    return item % NRB, (item // NRB) * KC + j % KC


@triton.jit
def weight_tile(w_rows, j, valid, KC: tl.constexpr, NRB, step, EVICT: tl.constexpr):
    """The [128, 128] weight tile of a program's j-th K block (`tile_at`) by a plain load (none if not
    `valid`), with the L2 eviction policy EVICT."""
    rb, kb = tile_at(j, KC, NRB, step)
    return tl.load(w_rows + (rb * 128).to(tl.int64) * 7168 + kb * 128, mask=valid, eviction_policy=EVICT)


@triton.jit
def register_stream_kernel(w_ptr, ws_ptr, a_ptr, as_ptr, out_ptr, n_items, R, BM: tl.constexpr, KC: tl.constexpr,
                           AHEAD: tl.constexpr, EVICT: tl.constexpr):  # fmt: skip
    """stream_kernel's items and math (plain item order, pointers, the dot and both scales) with the
    weight tiles loaded into registers AHEAD (1 or 2) K blocks before their dot, by hand, instead of
    by the pipeliner's cp.async: a plain load keeps its L2 eviction hint (Triton 3.6 drops it on
    cp.async, in Triton and in Gluon alike), so with EVICT = "evict_first" the weights should not push
    the dirty lines the harness's flush leaves out of the L2 during the call. The prefetch crosses item
    boundaries (the next item's first blocks load under this item's last dots)."""
    NKB: tl.constexpr = 7168 // 128
    NRB = R // 128
    rn = tl.arange(0, 128)
    kk = tl.arange(0, 128)
    tok = tl.arange(0, BM)
    step = tl.num_programs(0)
    n_mine = tl.cdiv(n_items - tl.program_id(0), step) * KC  # this program's K blocks, all its items
    w_rows = w_ptr + rn.to(tl.int64)[:, None] * 7168 + kk[None, :]

    w_next = weight_tile(w_rows, 0, n_mine > 0, KC, NRB, step, EVICT)
    w_next2 = weight_tile(w_rows, 1, (AHEAD == 2) & (n_mine > 1), KC, NRB, step, EVICT)
    acc = tl.zeros((128, BM), tl.float32)
    for j in tl.range(0, n_mine, num_stages=1):  # no pipeliner: the loads below are the prefetch
        w = w_next
        ahead = weight_tile(w_rows, j + AHEAD, j + AHEAD < n_mine, KC, NRB, step, EVICT)
        if AHEAD == 2:
            w_next = w_next2
            w_next2 = ahead
        else:
            w_next = ahead
        rb, kb = tile_at(j, KC, NRB, step)
        a = tl.load(a_ptr + tok[None, :] * 7168 + kb * 128 + kk[:, None])  # [BK, BM]
        s = tl.load(ws_ptr + rb * NKB + kb) * tl.load(as_ptr + kb * BM + tok)
        acc += tl.dot(w, a) * s[None, :]
        if j % KC == KC - 1:
            item = tl.program_id(0) + (j // KC) * step
            tl.store(out_ptr + item * (128 * BM) + rn[:, None] * BM + tok[None, :], acc)
            acc = tl.zeros((128, BM), tl.float32)


def reference(w, ws, a, as_, n_items, shape):
    """out[i] in fp32 from torch, item by item as the kernel numbers them."""
    nrb, nkb, kc = w.shape[0] // 128, H // 128, shape["kc"]
    wf, af = w.float(), a.float()
    tiles = wf.view(nrb, nkb, 128, 128) if shape["contig"] else wf.view(nrb, 128, nkb, 128).transpose(1, 2)
    out = torch.empty(n_items, 128, a.shape[0], device=w.device)
    for i in range(n_items):
        rb, kb0 = (i // (nkb // kc), (i % (nkb // kc)) * kc) if shape["k_first"] else (i % nrb, (i // nrb) * kc)
        acc = torch.zeros(128, a.shape[0], device=w.device)
        for kb in range(kb0, kb0 + kc):
            wt = tiles[rb, kb]
            part = wt @ af[:, kb * 128 : (kb + 1) * 128].T if shape["dot"] else wt.sum(1, keepdim=True).expand(-1, 16)
            acc += part * (ws[rb, kb] * as_[kb])[None, :] if shape["scales"] else part
        out[i] = acc
    return out


def parse_shape(spec: str) -> tuple[str, dict]:
    """NAME:key=value,... over the keys below (ints)."""
    name, _, fields = spec.partition(":")
    # ctas: per SM at most (0: all that fit); k_first, contig, dot: stream_kernel's K_FIRST, CONTIG, DOT
    # evict: 1 loads the weights with L2 policy evict_first (pointer loads only); ws: 1 warp-specializes
    # the K loop (stream_kernel's WS); gluon: 1 runs the hand-written load-only producer instead
    # (stream_probe_gluon.py: TMA, 4 + 4 + 1 warps; stages and kc apply, the other loop fields do not);
    # reg: 1 or 2 runs register_stream_kernel instead (weights by plain loads that many K blocks ahead:
    # warps, kc, ctas and evict apply)
    shape = {"tma": 0, "stages": 4, "warps": 4, "scales": 1, "kc": 8, "ctas": 0, "k_first": 0, "contig": 0, "dot": 1,
             "evict": 0, "ws": 0, "gluon": 0, "reg": 0}  # fmt: skip
    for item in filter(None, fields.split(",")):
        k, _, v = item.partition("=")
        if k not in shape:
            raise SystemExit(f"--try {spec}: {k} is not one of {', '.join(shape)}")
        shape[k] = int(v)
    other_loop = any(shape[k] for k in ("k_first", "contig", "tma", "ws")) or not (shape["dot"] and shape["scales"])
    if (shape["gluon"] or shape["reg"]) and other_loop:
        raise SystemExit(f"--try {spec}: the Gluon and register loops have the plain item order, pointers, the dot "
                         "and the scales only")  # fmt: skip
    if shape["reg"] not in (0, 1, 2) or (shape["reg"] and shape["gluon"]):
        raise SystemExit(f"--try {spec}: reg is 0, 1 or 2, and not with gluon")
    return name, shape


def time_call(call, flush: str, reps: int = 100) -> float:
    """Mean us of the kernel `call` launches, the L2 flushed before each one by writing (as the harness's
    do_bench does: zeros to 256 MB) or by reading a 256 MB buffer. Unlike the harness, no sync between
    the flush and the call: the launch is queued behind the flush, so host time stays out of the span."""
    cache = torch.empty(64 << 20, dtype=torch.int32, device="cuda")
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(10 + reps):
        if flush == "write":
            cache.zero_()
        else:
            cache.sum()  # reads the buffer: the L2 left holding clean lines
        if i >= 10:
            starts[i - 10].record()
        call()
        if i >= 10:
            ends[i - 10].record()
    torch.cuda.synchronize()
    return 1e3 * sum(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)) / reps


def make_inputs(rows: int, bm: int, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    w = (torch.randn(rows, H, generator=g) * 0.5).to(torch.float8_e4m3fn).to(device)
    a = (torch.randn(bm, H, generator=g)).to(torch.float8_e4m3fn).to(device)
    ws = (torch.rand(rows // 128, H // 128, generator=g) + 0.5).to(device)
    as_ = (torch.rand(H // 128, bm, generator=g) + 0.5).to(device)
    return w, ws, a, as_


@functools.cache
def gluon_loop():
    """scripts/stream_probe_gluon.py (the Gluon loop), imported once, on first use (Gluon needs a GPU)."""
    import importlib.util

    path = Path(__file__).with_name("stream_probe_gluon.py")
    spec = importlib.util.spec_from_file_location("stream_probe_gluon", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def launch(shape: dict, w, ws, a, as_, out, grid: int):
    """One call of the probe kernel for `shape` over every item (out: [n_items, 128, BM])."""
    if shape["gluon"]:
        return gluon_loop().launch(w, ws, a, as_, out, grid, shape["kc"], shape["stages"])
    if shape["reg"]:
        return register_stream_kernel[(grid,)](
            w, ws, a, as_, out, out.shape[0], w.shape[0], BM=a.shape[0], KC=shape["kc"], AHEAD=shape["reg"],
            EVICT="evict_first" if shape["evict"] else "", num_warps=shape["warps"],
        )  # fmt: skip
    from triton.tools.tensor_descriptor import TensorDescriptor

    desc = TensorDescriptor.from_tensor(w.view(-1, 128) if shape["contig"] else w, [BN, BK]) if shape["tma"] else w
    a_desc = TensorDescriptor.from_tensor(a, [a.shape[0], BK]) if shape["tma"] else a
    return stream_kernel[(grid,)](
        w, desc, ws, a, a_desc, as_, out, out.shape[0], w.shape[0], BM=a.shape[0], KC=shape["kc"],
        TMA=bool(shape["tma"]), SCALES=bool(shape["scales"]), STAGES=shape["stages"], K_FIRST=bool(shape["k_first"]),
        CONTIG=bool(shape["contig"]), DOT=bool(shape["dot"]), EVICT="evict_first" if shape["evict"] else "",
        WS=bool(shape["ws"]), num_warps=shape["warps"],
    )  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=12288, help="weight rows (12288: 3 experts' W1, T = 1's 88 MB)")
    ap.add_argument("--bm", type=int, default=16)
    ap.add_argument("--try", dest="tries", action="append", default=[])
    args = ap.parse_args()
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    w, ws, a, as_ = make_inputs(args.rows, args.bm, dev)
    rows = []
    print(f"{'shape':14} {'us':>8} {'TB/s':>6} {'GB/s/SM':>8} {'us rdfl':>8} {'TB/s':>6} {'grid':>5} {'regs':>4} "
          f"{'smem':>7}  fields")  # fmt: skip
    for name, shape in map(parse_shape, args.tries or ["ptr:"]):
        n_items = (args.rows // 128) * (H // 128 // shape["kc"])
        out = torch.full((n_items, 128, args.bm), float("nan"), device=dev)
        ck = launch(shape, w, ws, a, as_, out, sms)
        # CTAs an SM that fit; the kernel's own warp count (warp specialization adds warps)
        occ = max(1, min(65536 // (ck.n_regs * 32 * ck.metadata.num_warps), 232448 // (ck.metadata.shared + 1024)))
        grid = min(n_items, sms * (min(occ, shape["ctas"]) if shape["ctas"] else occ))
        launch(shape, w, ws, a, as_, out.fill_(float("nan")), grid)
        want = reference(w, ws, a, as_, min(n_items, 4), shape)
        err = ((out[: len(want)] - want).norm() / want.norm()).item()
        if not err < 1e-3 or out.isnan().any():
            print(f"{name:14} ERROR: rel L2 {err:.3g} against torch (or NaN left); not timed")
            rows.append({"name": name, "shape": shape, "error": err})
            continue
        call = lambda s=shape, o=out, g=grid: launch(s, w, ws, a, as_, o, g)  # noqa: E731
        us, us_read = time_call(call, "write"), time_call(call, "read")
        tbs, tbs_read = w.numel() / us / 1e6, w.numel() / us_read / 1e6
        row = {"name": name, "shape": shape, "us": us, "tb_s": tbs, "gb_s_per_sm": tbs * 1e3 / sms,
               "us_read_flush": us_read, "tb_s_read_flush": tbs_read, "grid": grid, "regs": ck.n_regs,
               "smem": ck.metadata.shared}  # fmt: skip
        rows.append(row)
        print(f"{name:14} {us:8.1f} {tbs:6.2f} {row['gb_s_per_sm']:8.1f} {us_read:8.1f} {tbs_read:6.2f} {grid:5} "
              f"{ck.n_regs:4} {ck.metadata.shared:7}  {shape}")  # fmt: skip
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "stream_probe.json").write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
