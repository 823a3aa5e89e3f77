"""Block-scaled FP8 GEMM on the GPU: every version's error against an fp32 reference, then its TFLOP/s
(triton.testing.do_bench, median), at GEMM1's shape (M=16384 N=4096 K=7168) and GEMM2's (N=7168 K=2048).

    python scripts/bench_blockscaled_gemm.py [--shapes 16384x4096x7168,16384x7168x2048] [--quick]

Versions: cuBLAS `torch._scaled_mm` without block scales (the ceiling), (a) plain Triton without scales,
(a) with the plain promotion, (a) with warp_specialize, (b) Gluon: serial promotion with 4 and 5 stages,
two partials in flight, and without scales (its barriers and waits, no promotion). A version that fails
to compile or run is reported and skipped. Writes $OUT/bench_blockscaled_gemm.json when OUT is set.
About 1-2 minutes on an H200 (compiles included).
"""

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gemm_blockscaled", ROOT / "variants/r4_fused/gemm_blockscaled.py")
gb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gb)

REL_L2_MAX = 5e-3  # bf16 output rounding is ~1.5e-3 relative; a wrong scale gives ~1


def versions():
    """(name, fn(a, sa, b, sb, out), scaled) for every version timed."""
    tr = gb.blockscaled_gemm_triton
    gl = gb.blockscaled_gemm_gluon
    return [
        ("cublas_scaled_mm_noscales", None, False),
        ("a_triton_noscales", lambda *t, out: tr(*t, out=out, scaled=False), False),
        ("a_triton_noscales_ws", lambda *t, out: tr(*t, out=out, scaled=False, warp_specialize=True), False),
        ("a_triton_scaled", lambda *t, out: tr(*t, out=out), True),
        ("a_triton_scaled_ws", lambda *t, out: tr(*t, out=out, warp_specialize=True), True),
        ("b_gluon_serial_s4", lambda *t, out: gl(*t, out=out, in_flight=False, stages=4), True),
        ("b_gluon_serial_s5", lambda *t, out: gl(*t, out=out, in_flight=False, stages=5), True),
        ("b_gluon_inflight_s4", lambda *t, out: gl(*t, out=out, in_flight=True, stages=4), True),
        ("b_gluon_noscales_s4", lambda *t, out: gl(*t, out=out, scaled=False, stages=4), False),
    ]


def bench_shape(M, N, K, quick, save):
    a, sa, b, sb = gb.make_inputs(M, N, K, device="cuda", seed=M + N + K)
    ref = gb.reference(a, sa, b, sb)  # fp32 on the GPU (no TF32): ~1 TFLOP, well under a second
    ref_plain = a.float() @ b.float().t()
    out = torch.empty(M, N, dtype=torch.bfloat16, device="cuda")
    one = torch.ones((), device="cuda")
    flops = 2.0 * M * N * K
    rows = []
    for name, fn, scaled in versions():
        row = dict(shape=f"{M}x{N}x{K}", version=name, scaled=scaled)
        try:
            if fn is None:
                bt = b.t()  # column-major view of B^T: what cuBLAS FP8 wants

                def run(bt=bt):
                    return torch._scaled_mm(a, bt, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

                got = run()
            else:

                def run(fn=fn, out=out):
                    return fn(a, sa, b, sb, out=out)

                out.fill_(float("nan"))  # a version that leaves elements unwritten must not pass
                got = run()
            torch.cuda.synchronize()
            row["rel_l2"] = gb.rel_l2(got, ref if scaled else ref_plain)
            row["ok"] = bool(row["rel_l2"] < REL_L2_MAX and torch.isfinite(got).all().item())
            ms = do_bench(run, warmup=5 if quick else 25, rep=20 if quick else 100, return_mode="median")
            row["ms"] = ms
            row["tflops"] = flops / (ms * 1e-3) / 1e12
        except Exception as e:  # report this version's failure and go on
            row["error"] = f"{type(e).__name__}: {e}"[-2000:]
            row["ok"] = False
            traceback.print_exc()
        print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        rows.append(row)
        save(rows)
    return rows


def provenance():
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return None

    return dict(
        gpu=torch.cuda.get_device_name(),
        capability=list(torch.cuda.get_device_capability()),
        sms=torch.cuda.get_device_properties(0).multi_processor_count,
        torch=torch.__version__,
        triton=triton.__version__,
        python=platform.python_version(),
        git=git("rev-parse", "HEAD"),
        dirty=bool(git("status", "--porcelain")),
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="16384x4096x7168,16384x7168x2048")
    p.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    t0 = time.time()
    rows = []
    prov = provenance()
    path = Path(os.environ["OUT"]) / "bench_blockscaled_gemm.json" if os.environ.get("OUT") else None

    def save(new_rows):  # after every version: a hang or a crash later still leaves what was measured
        if path:
            path.write_text(json.dumps(dict(provenance=prov, rows=rows + new_rows), indent=1))

    for shape in args.shapes.split(","):
        M, N, K = (int(x) for x in shape.split("x"))
        rows += bench_shape(M, N, K, args.quick, save)
        torch.cuda.empty_cache()
    print(f"\n{'shape':>17} {'version':28} {'rel L2':>9} {'ms':>8} {'TFLOP/s':>8}  status")
    for r in rows:
        status = "ok" if r["ok"] else ("ERROR " + r["error"].splitlines()[-1][:60] if "error" in r else "WRONG")
        nan = float("nan")
        err, ms, tf = r.get("rel_l2", nan), r.get("ms", nan), r.get("tflops", nan)
        print(f"{r['shape']:>17} {r['version']:28} {err:9.2e} {ms:8.3f} {tf:8.1f}  {status}")
    print(f"total {time.time() - t0:.0f} s")
    if path:
        save([])
        print(f"wrote {path}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
