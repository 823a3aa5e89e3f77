"""Compile a Triton rung's kernels offline for sm_90 and sm_100, exactly as its workspace of each T
builds them, and report what the compiler made of them. No GPU needed: Triton's own ptxas compiles,
its bundled cuobjdump reads the cubin.

    python scripts/compile_check.py r3-triton-fp8                   # sm_90 and sm_100, the contest's T
    python scripts/compile_check.py r3-triton-fp8 --cap 100 -t 1 -t 14107 -k gemm1

One line per kernel: registers per thread, stack (bytes spilled to local memory), shared memory, warps,
stages, `loop_spills` (LDL/STL inside the innermost loops that issue MMAs, on the path every iteration
runs: spills paid every K step, `fibmoe.sass`), `branch_spills` (those the loop jumps over: an epilogue
inside it, paid once per N steps), and counts of telling SASS instructions: the MMA ones (QGMMA/HGMMA
on sm_90, UTC*MMA on sm_100, HMMA/QMMA otherwise), local loads/stores (LDL/STL: spills), async copies,
atomics and L1 invalidations (CCTL.IVALL: what an acquire compiles to).

The hook: a rung's entry module provides `compile_plan(T, cap, sms)`, returning the kernels a workspace
of T tokens builds on a GPU of compute capability `cap` (x 10) with `sms` SMs, as a list of
(name, jit function, arguments, constexprs, launch options): arguments in the kernel's order (tensors,
typically on the "meta" device, give each pointer's element type; ints are i32, floats fp32), the
constexprs by name, the options as given to the launch (num_warps, num_stages, ...).
"""

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # compile for a GPU even where there is none
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402
from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fibmoe import variants  # noqa: E402
from fibmoe.errors import FibmoeError  # noqa: E402
from fibmoe.sass import MMA_OPS, count_ops, cubin_report, hot_loop_spills  # noqa: E402

CONTEST_T = (1, 7, 16, 56, 901, 14107)  # one workload per tile bucket of the contest's 19
SMS = {90: 132, 100: 148}  # H100/H200, B200
TYPES = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float8_e4m3fn: "fp8e4nv",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.uint8: "u8",
}
SASS_OPS = MMA_OPS + ("LDL", "STL", "LDGSTS", "UTMALDG", "ATOMG", "REDG", "RED.", "MUFU.EX2", "CCTL.IVALL")


def load_entry_module(name: str):
    """The variant's entry module, packed (shared files beside its own) and imported as a package."""
    variant = variants.resolve([name])[0]
    pkg = Path(tempfile.mkdtemp(prefix="compile_check_")) / "packed"
    pkg.mkdir()
    for rel, src in variant.source_files().items():
        (pkg / rel).write_text(src.read_text())
    (pkg / "__init__.py").touch()
    sys.path.insert(0, str(pkg.parent))
    module = importlib.import_module("packed." + variant.spec.entry_point.split("::")[0].removesuffix(".py"))
    if not hasattr(module, "compile_plan"):
        raise FibmoeError(f"{name}: its entry module has no compile_plan(T, cap, sms) (see scripts/compile_check.py)")
    return module


def signature(fn, args, consts):
    """Triton's signature for `fn` from example arguments; pointers are assumed 16-byte aligned."""
    sig, attrs = {}, {}
    runtime = iter(args)
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        a = next(runtime)
        if isinstance(a, torch.Tensor):
            sig[name] = "*" + TYPES[a.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif hasattr(a, "block_shape"):  # a TMA tensor descriptor (Gluon kernels): Triton's own specialization
            sig[name] = native_specialize_impl(BaseBackend, a, False, True, True)[0]
        elif isinstance(a, bool) or not isinstance(a, (int, float)):
            raise TypeError(f"{fn.__name__}: argument {name} is a {type(a).__name__}")
        else:
            sig[name] = "i32" if isinstance(a, int) else "fp32"
    return sig, attrs


def compile_one(fn, args, consts, opts, cap):
    sig, attrs = signature(fn, args, consts)
    options = {k: v for k, v in opts.items() if k in ("num_warps", "num_stages", "maxnreg")}
    source = ASTSource
    if type(fn).__name__ == "GluonJITFunction":  # Gluon kernels (rung 4's large-T GEMMs, sm_90)
        from triton.experimental.gluon._runtime import GluonASTSource as source
    kernel = triton.compile(
        source(fn, sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", cap, 32), options=options
    )
    rep = cubin_report(kernel.asm["cubin"])
    return dict(
        regs=rep["regs"],
        stack=rep["stack"],
        smem=kernel.metadata.shared,
        warps=kernel.metadata.num_warps,
        stages=options.get("num_stages", 3),
        **hot_loop_spills(rep["sass"]),  # loop_spills, branch_spills
        sass=count_ops(rep["sass"], SASS_OPS),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", help="a Triton rung whose entry module has compile_plan, e.g. r3-triton-fp8")
    parser.add_argument("--cap", type=int, action="append", help="compute capability x 10 (default: 90 and 100)")
    parser.add_argument("-t", "--seq-len", type=int, action="append", help=f"T (default: {CONTEST_T})")
    parser.add_argument("-k", "--kernel", action="append", help="only the kernels of these names (default: all)")
    a = parser.parse_args(argv)
    try:
        module = load_entry_module(a.variant)
    except FibmoeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for cap in a.cap or (90, 100):
        for T in a.seq_len or CONTEST_T:
            for name, fn, args, consts, opts in module.compile_plan(T, cap, SMS.get(cap, 132)):
                if a.kernel and name not in a.kernel:
                    continue
                r = compile_one(fn, args, consts, opts, cap)
                print(
                    f"sm_{cap} T={T:<6} {name:10s} regs={r['regs']} stack={r['stack']} smem={r['smem']} "
                    f"warps={r['warps']} stages={r['stages']} loop_spills={r['loop_spills']} "
                    f"branch_spills={r['branch_spills']} {r['sass']}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
