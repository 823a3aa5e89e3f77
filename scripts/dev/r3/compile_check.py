"""Compile rung 3's kernels for sm_90 and sm_100 without a GPU; report registers, spills, shared
memory and which MMA instructions the SASS holds. Usage: python compile_check.py [90 100]"""

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
spec = importlib.util.spec_from_file_location("r3moe", HERE.parent / "moe.py")
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


def main(caps):
    for cap in caps:
        for bt, nw in ((1, 1), (16, 8)):
            compile_one(
                f"route_bt{bt}",
                moe._route_kernel,
                dict(
                    logits_ptr="fp32", bias_ptr="bf16", ids_ptr="i32", w_ptr="fp32", out_ptr="bf16", scratch_ptr="fp32"
                ),
                {"T", "local_off"},
                {"rsf"},
                dict(
                    E=256,
                    NL=32,
                    H=7168,
                    NG=8,
                    KG=4,
                    TOPK=8,
                    BT=bt,
                    USE_LIBDEVICE=True,
                    WRITE_ZEROS=True,
                    ZERO_SCRATCH=False,
                    EXACT=False,
                ),
                cap,
                nw,
            )
        compile_one(
            "sort",
            moe._sort_kernel,
            dict(ids_ptr="i32", counts_ptr="i32", lists_ptr="i32"),
            {"T", "local_off"},
            set(),
            dict(TOPK=8, BC=1024, NCHUNK=14),
            cap,
        )
        g1p = dict(
            hs_ptr="fp8e4nv",
            hss_ptr="fp32",
            w1_ptr="fp8e4nv",
            w1s_ptr="fp32",
            ids_ptr="i32",
            counts_ptr="i32",
            lists_ptr="i32",
            cq_ptr="fp8e4nv",
            cs_ptr="fp32",
            part_ptr="fp32",
            ticket_ptr="i32",
        )
        for bm, s, nw, ns, inl, tp in (
            (16, 8, 4, 3, True, 1),
            (16, 4, 4, 3, True, 8),
            (16, 1, 4, 3, True, 64),
            (16, 1, 4, 3, True, 128),
            (64, 1, 8, 3, False, 1),
        ):
            compile_one(
                f"gemm1_bm{bm}_s{s}_tp{tp}",
                moe._gemm1_kernel,
                g1p,
                {"T", "local_off"},
                set(),
                dict(
                    NL=32,
                    NLP=32,
                    H=7168,
                    I=2048,
                    TP=tp,
                    TOPK=8,
                    BM=bm,
                    SPLIT_K=s,
                    ITERS=4,
                    TILE_FAST=not inl,
                    INLINE=inl,
                    EXACT=False,
                ),
                cap,
                nw,
                ns,
            )
        g2p = dict(
            cq_ptr="fp8e4nv",
            cs_ptr="fp32",
            w2_ptr="fp8e4nv",
            w2s_ptr="fp32",
            ids_ptr="i32",
            w_ptr="fp32",
            counts_ptr="i32",
            lists_ptr="i32",
            out_ptr="bf16",
            obuf_ptr="fp32",
        )
        for bm, bh, nw, ns, inl, tp, at in (
            (16, 64, 4, 4, True, 1, False),
            (16, 128, 4, 4, True, 64, False),
            (64, 128, 8, 3, False, 1, False),
            (128, 128, 8, 3, False, 1, False),
            (16, 128, 4, 4, True, 64, True),
        ):
            compile_one(
                f"gemm2_bm{bm}_bh{bh}_tp{tp}{'_at' if at else ''}",
                moe._gemm2_kernel,
                g2p,
                {"T", "local_off"},
                set(),
                dict(
                    NL=32,
                    NLP=32,
                    H=7168,
                    I=2048,
                    TP=tp,
                    TOPK=8,
                    BM=bm,
                    BH=bh,
                    ITERS=4,
                    TILE_FAST=not inl,
                    INLINE=inl,
                    ATOMIC=at,
                    EXACT=False,
                ),
                cap,
                nw,
                ns,
            )
        compile_one(
            "finalize",
            moe._finalize_kernel,
            dict(ids_ptr="i32", obuf_ptr="fp32", out_ptr="bf16"),
            {"T", "local_off"},
            set(),
            dict(NL=32, H=7168, TOPK=8, BT=8, BH=1024, ATOMIC=False, EXACT=False),
            cap,
        )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [90])
