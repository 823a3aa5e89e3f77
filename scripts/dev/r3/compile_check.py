"""Compile rung 3's kernels for sm_90 and sm_100 without a GPU, exactly as the workspace of each T in
T_LIST builds them; report registers, spills, shared memory and which MMA instructions the SASS holds.
Usage: python compile_check.py [90 100] [--T 1,56] [--set bm1=64,sw1=0]"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("r3moe", HERE.parents[2] / "variants" / "r3_triton_fp8" / "moe.py")
moe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(moe)
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def sig_of(fn, ptrs, ints, floats, consts):
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptrs:
            sig[name] = "*" + ptrs[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in ints:
            sig[name] = "i32"
        elif name in floats:
            sig[name] = "fp32"
        else:
            raise KeyError(name)
    return sig, attrs


def compile_one(label, fn, ptrs, ints, floats, consts, cap, num_warps=4, num_stages=3):
    floats = set(floats) & set(fn.arg_names)
    sig, attrs = sig_of(fn, ptrs, ints, floats, consts)
    src = ASTSource(fn, sig, constexprs=consts, attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", cap, 32), options=dict(num_warps=num_warps, num_stages=num_stages))
    cubin = k.asm["cubin"]
    p = Path(f"/tmp/r3_{label}_{cap}.cubin")
    p.write_bytes(cubin)
    res = subprocess.run(
        [str(BIN / "cuobjdump"), "--dump-resource-usage", str(p)], capture_output=True, text=True
    ).stdout
    regs = re.search(r"REG:(\d+)", res)
    stack = re.search(r"STACK:(\d+)", res)
    sass = subprocess.run([str(BIN / "cuobjdump"), "--dump-sass", str(p)], capture_output=True, text=True).stdout
    ops = {}
    for op in (
        "QGMMA",
        "HGMMA",
        "UTCQMMA",
        "UTCHMMA",
        "UTCMMA",
        "HMMA",
        "QMMA",
        "IMMA",
        "LDL",
        "STL",
        "LDGSTS",
        "UTMALDG",
        "ATOMG",
        "REDG",
        "RED.",
        "MUFU.EX2",
    ):
        n = len(re.findall(r"\b" + re.escape(op), sass))
        if n:
            ops[op] = n
    print(
        f"sm_{cap} {label:28s} regs={regs.group(1) if regs else '?'} stack={stack.group(1) if stack else '?'} "
        f"smem={k.metadata.shared} warps={num_warps} stages={num_stages} {ops}",
        flush=True,
    )
    return k


PTR_TYPES = dict(
    logits_ptr="fp32", bias_ptr="bf16", wts_ptr="fp32", w_ptr="fp32", out_ptr="bf16", scratch_ptr="fp32",
    hs_ptr="fp8e4nv", hss_ptr="fp32", w1_ptr="fp8e4nv", w1s_ptr="fp32", ids_ptr="i32", counts_ptr="i32",
    lists_ptr="i32", cq_ptr="fp8e4nv", cs_ptr="fp32", part_ptr="fp32", ticket_ptr="i32", obuf_ptr="fp32",
    w2_ptr="fp8e4nv", w2s_ptr="fp32",
)  # fmt: skip
T_LIST = (1, 7, 16, 56, 901, 14107)


def workspace_kernels(T, cap, override=None):
    """The kernels (fn, constexprs, launch options) that `_Workspace` builds for T on a GPU of
    capability `cap` (on the "meta" device: nothing is allocated)."""
    import torch

    moe.CONFIG_OVERRIDE.clear()
    moe.CONFIG_OVERRIDE.update(override or {})
    try:
        ws = moe._Workspace(torch.device("meta"), T, 256, 32, 7168, 2048, cap=cap)
    finally:
        moe.CONFIG_OVERRIDE.clear()
    out = []
    for k in ws.kernels:
        consts = dict(k.consts)
        if "USE_LIBDEVICE" in consts:
            consts["USE_LIBDEVICE"] = True
        out.append((k.fn, consts, k.opts))
    return out


def compile_workspace(T, cap, override=None, label=""):
    for fn, consts, opts in workspace_kernels(T, cap, override):
        names = [n for n in fn.arg_names if n not in consts]
        ptrs = {n: PTR_TYPES[n] for n in names if n.endswith("_ptr")}
        compile_one(
            f"T{T}{label}:{fn.__name__.strip('_').replace('_kernel', '')}", fn, ptrs, {"T", "local_off"}, {"rsf"},
            consts, cap, opts.get("num_warps", 4), opts.get("num_stages", 3),
        )  # fmt: skip


def _parse_override(spec):
    out = {}
    for item in filter(None, spec.split(",")):
        k, v = item.split("=")
        out[k] = v.lower() in ("1", "true") if k in ("sw1", "sw2", "spf1", "spf2", "pdl", "obf", "fr", "tf1", "tf2", "hl") else int(v)
    return out


def main(argv):
    """compile_check.py [CAP ...] [--T T1,T2] [--set key=val,...] (overrides of `_config`)"""
    caps, ts, override = [], T_LIST, {}
    it = iter(argv)
    for a in it:
        if a == "--T":
            ts = [int(x) for x in next(it).split(",")]
        elif a == "--set":
            override = _parse_override(next(it))
        else:
            caps.append(int(a))
    for cap in caps or [90]:
        for T in ts:
            compile_workspace(T, cap, override, f"[{','.join(f'{k}={v}' for k, v in override.items())}]" if override else "")


if __name__ == "__main__":
    main(sys.argv[1:])
