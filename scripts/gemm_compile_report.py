"""Compile the block-scaled FP8 GEMM kernels (variants/r4_fused/gemm_blockscaled.py) without a GPU and
report what the SASS says: registers, spills (stack, LDL/STL), shared memory, and the MMA instructions
(QGMMA = FP8 wgmma on sm_90, UTCQMMA = FP8 tcgen05 on sm_100). Uses Triton's bundled ptxas and cuobjdump.

Each kernel is compiled from the same launch plan (`triton_launch` / `gluon_launch`) that runs it, on
"meta" tensors of the GEMM1 shape (shapes are runtime values: the code does not depend on them). Also
rung 4's large-T GEMM1 (`gemm1_gluon.py`, grouped, with the SwiGLU epilogue) and the permute launch
before it, from a large-T workspace of the contest's geometry at T = 14107.

    python scripts/gemm_compile_report.py [--json FILE] [--sass DIR]
"""

import argparse
import functools
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
import torch  # noqa: E402
import triton  # noqa: E402
from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fibmoe.sass import count_ops, cubin_report, hot_loop_spills, nvidia_bin  # noqa: E402

BIN = nvidia_bin()
OPS = ("QGMMA", "HGMMA", "UTCQMMA", "UTCHMMA", "WARPGROUP.ARRIVE", "WARPGROUP.DEPBAR", "UTMALDG", "UTMASTG",
       "SYNCS", "USETMAXREG", "BAR.SYNC", "FFMA", "FMUL", "LDL", "STL")  # fmt: skip


def load_module():
    spec = importlib.util.spec_from_file_location("gemm_blockscaled", ROOT / "variants/r4_fused/gemm_blockscaled.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def meta_inputs(M=16384, N=4096, K=7168):
    dev = torch.device("meta")
    a = torch.empty(M, K, dtype=torch.float8_e4m3fn, device=dev)
    b = torch.empty(N, K, dtype=torch.float8_e4m3fn, device=dev)
    a_scale = torch.empty(K // 128, M, device=dev)
    b_scale = torch.empty(N // 128, K // 128, device=dev)
    out = torch.empty(M, N, dtype=torch.bfloat16, device=dev)
    return a, a_scale, b, b_scale, out


def compile_plan(plan, cap, gluon):
    """triton.compile of one launch plan for sm_<cap>; returns the compiled kernel."""
    kernel, _grid, args, consts, opts = plan
    sig, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            sig[name] = "constexpr"
            continue
        sig[name] = native_specialize_impl(BaseBackend, args[name], False, True, True)[0]
        if isinstance(args[name], torch.Tensor):
            attrs[(i,)] = [["tt.divisibility", 16]]
    if gluon:
        from triton.experimental.gluon._runtime import GluonASTSource

        src = GluonASTSource(kernel, sig, constexprs=consts, attrs=attrs)
    else:
        src = ASTSource(kernel, sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", cap, 32), options=dict(opts))


def ptxas_notes(compiled, cap):
    """ptxas -v on the kernel's PTX: spill lines and the C75xx notes (wgmma serialized, and why)."""
    ptxas = BIN / ("ptxas-blackwell" if cap >= 100 and (BIN / "ptxas-blackwell").exists() else "ptxas")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "k.ptx").write_text(compiled.asm["ptx"])
        arch = f"sm_{cap}a"
        res = subprocess.run([ptxas, f"-arch={arch}", "-v", Path(tmp) / "k.ptx", "-o", Path(tmp) / "k.cubin"],
                             capture_output=True, text=True)  # fmt: skip
    lines = (res.stdout + res.stderr).splitlines()
    return [ln.strip() for ln in lines if "C75" in ln or "spill" in ln or "error" in ln.lower()]


def sass_report(compiled, label, sass_dir=None, cap=90):
    rep = cubin_report(compiled.asm["cubin"])
    if sass_dir:
        Path(sass_dir).mkdir(parents=True, exist_ok=True)
        (Path(sass_dir) / f"{label}.sass").write_text(rep["sass"])
    return dict(
        label=label,
        regs=rep["regs"],
        stack=rep["stack"],
        smem=compiled.metadata.shared,
        setmaxnreg=sorted(
            set(int(x) for x in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", compiled.asm["ptx"]))
        ),
        ops=count_ops(rep["sass"], OPS),
        **hot_loop_spills(rep["sass"]),  # loop_spills, branch_spills
        ptxas=ptxas_notes(compiled, cap),
    )


@functools.cache
def large_t_modules():
    """Rung 4's packed modules (scripts/compile_check.py packs it as `packed`): (large_t, launch)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import compile_check

    compile_check.load_entry_module("r4-fused-persistent")
    return importlib.import_module("packed.large_t"), importlib.import_module("packed.launch")


def large_t_plans(T=14107, geometry=(256, 32, 7168, 2048), **workspace_args):
    """{kernel name: plan} of the permute and the two Gluon GEMM launches of a large-T workspace of T
    tokens (`workspace_args`: large_t.Workspace's own, e.g. gemm2_columns), built on the "meta" device
    from the arguments a call passes them."""
    large_t, launch = large_t_modules()
    ws = large_t.Workspace(torch.device("meta"), T, *geometry, 90, 132, **workspace_args)
    inputs = list(launch.meta_call_arguments(T, *geometry))
    plans = {}
    for k, args in list(ws.large_t_launches(*inputs))[2:5]:
        names = k.fn.arg_names[: len(k.fn.arg_names) - len(k.consts)]
        plans[k.fn.__name__] = (k.fn, k.grid, dict(zip(names, args, strict=True)), k.consts, k.opts)
    return plans


def variants(mod):
    """(label, cap, gluon, plan-maker) for every version the benchmark times."""
    out = []
    for cap in (90, 100):
        for label, cfg in (("a_plain", dict(scaled=False)), ("a_plain_ws", dict(scaled=False, warp_specialize=True)),
                           ("a_scaled", {}), ("a_scaled_ws", dict(warp_specialize=True))):  # fmt: skip
            out.append((f"sm{cap}_{label}", cap, False, lambda m=mod, c=cfg: m.triton_launch(*meta_inputs(), **c)))
    gluon_configs = (
        ("b_serial_s4", dict(stages=4, in_flight=False)),
        ("b_serial_s5", dict(stages=5, in_flight=False)),
        ("b_inflight_s4", dict(stages=4, in_flight=True)),
        ("b_noscales_s4", dict(stages=4, scaled=False)),
    )
    for label, cfg in gluon_configs:
        out.append((f"sm90_{label}", 90, True, lambda m=mod, c=cfg: m.gluon_launch(*meta_inputs(), **c)))
    for tag, ws_args in (("", {}), ("_own_lo", dict(shared_lo_scale=False))):  # the solution's C; rung 3's pair
        plan = lambda a=ws_args: large_t_plans(**a)["gemm1_gluon_kernel"]  # noqa: E731
        out.append((f"sm90_moe_gemm1_grouped{tag}", 90, True, plan))
        if not tag:  # GEMM1 gathering the activation rows itself instead of loading the permute's copy by TMA
            plan = lambda: large_t_plans(gather_rows=True)["gemm1_gluon_kernel"]  # noqa: E731
            out.append(("sm90_moe_gemm1_grouped_gather", 90, True, plan))
        for n in (128, 256):
            plan = lambda n=n, a=ws_args: large_t_plans(gemm2_columns=n, **a)["gemm2_gluon_kernel"]  # noqa: E731
            out.append((f"sm90_moe_gemm2_grouped_n{n}{tag}", 90, True, plan))
    for cap in (90, 100):
        out.append((f"sm{cap}_moe_permute", cap, False, lambda: large_t_plans()["permute_kernel"]))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the report here too")
    p.add_argument("--sass", help="dump each kernel's SASS into this folder")
    p.add_argument("--only", default="", help="compile the labels holding one of these comma-separated substrings")
    args = p.parse_args(argv)
    mod = load_module()
    rows = []
    for label, cap, gluon, make_plan in variants(mod):
        if not any(part in label for part in args.only.split(",")):
            continue
        try:
            row = sass_report(compile_plan(make_plan(), cap, gluon), label, args.sass, cap)
        except Exception as e:  # report and go on: one version's failure must not hide the others
            row = dict(label=label, error=f"{type(e).__name__}: {e}"[-2000:])
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
