"""stream_probe.py's loop with a load-only producer, written by hand in Gluon (Hopper, sm_90): does a warp
that only issues TMA copies lift the per-SM weight stream at tiny T? (issue 7; NOTES.md v42-v43)

The same items as `stream_probe.stream_kernel` (K_FIRST=0, CONTIG=0): item i is weight rows rb * 128 ..
+128 and K blocks kb0 .. kb0 + KC (rb = i % NRB, kb0 = (i // NRB) * KC); out[i] = the sum over those K
blocks of (W_tile @ A_tile^T) * w_scale[rb, kb] * a_scale[kb, token], [128, BM] fp32. The warps:

- one producer warp: per K block, both 64-row halves of the weight tile and the [BM, 128] activation tile
  by TMA into a ring of STAGES stages, across item boundaries (it never waits on an MMA, only on a free
  stage);
- two consumer warpgroups, one 64-row half each: a swapped wgmma (weights on M, the BM tokens on N),
  waited for, promoted with the two block scales, the stage released; the item's [64, BM] rows stored.

As the large-T GEMMs (`variants/r4_fused/gemm1_gluon.py`) do; `scripts/` cannot import `variants/`, and a
probe stands apart from the packed solutions, so the few lines of layout live here too. Gluon kernels do
not run in the CPU interpreter: `python scripts/stream_probe_gluon.py [--stages 6]` compiles it for
sm_90 offline and prints what the compiler made of it (a JSON line; `tests/test_stream_probe.py` runs it);
only a GPU run checks its numbers (stream_probe.py checks every shape against torch before timing it).
Measured on the H200 (v44): right, one CTA an SM (12 warps at 168 registers), 3.68-3.71 TB/s at 940 MB
with 4-12 stages, as three CTAs of the pointer loop; 2.08-2.28 TB/s at 88 MB (the pointer loop: 2.47).
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

HALF = gl.constexpr(64)  # weight rows per consumer warpgroup: one m64 wgmma
NKB = gl.constexpr(7168 // 128)  # K blocks of a weight row (H = 7168, as stream_probe)
BM = gl.constexpr(16)  # tokens (the wgmma's N): a module constant, as a worker partition's constexpr
# arguments arrive as tensors (Triton 3.6) and a layout needs the number


@gluon.jit
def _producer(w_desc, a_desc, w_bufs, a_bufs, ready, empty, n_items, R, KC: gl.constexpr):
    """One warp: TMA copies of every item's K blocks into the ring of stages."""
    STAGES: gl.constexpr = a_bufs.shape[0]
    nbytes: gl.constexpr = 2 * w_desc.block_type.nbytes + a_desc.block_type.nbytes
    NRB = R // 128
    it = 0
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        rb = item % NRB
        kb0 = (item // NRB) * KC
        for ki in range(KC):
            s = it % STAGES
            mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
            bar = ready.index(s)
            mbarrier.expect(bar, nbytes)
            for h in gl.static_range(2):
                tma.async_copy_global_to_shared(w_desc, [rb * 128 + h * HALF, (kb0 + ki) * 128], bar,
                                                w_bufs.index(2 * s + h))  # fmt: skip
            tma.async_copy_global_to_shared(a_desc, [0, (kb0 + ki) * 128], bar, a_bufs.index(s))
            it += 1


@gluon.jit
def _consumer(w_bufs, a_bufs, ready, empty, ws_ptr, as_ptr, out_ptr, n_items, R, KC: gl.constexpr,
              WG: gl.constexpr):  # fmt: skip
    """One warpgroup: weight rows [WG * 64, WG * 64 + 64) of every item."""
    STAGES: gl.constexpr = a_bufs.shape[0]
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BM, 32])  # fmt: skip
    rows = gl.arange(0, HALF, layout=gl.SliceLayout(1, acc_layout))
    tok = gl.arange(0, BM, layout=gl.SliceLayout(0, acc_layout))
    NRB = R // 128
    it = 0
    for item in range(gl.program_id(0), n_items, gl.num_programs(0)):
        rb = item % NRB
        kb0 = (item // NRB) * KC
        acc = gl.zeros([HALF, BM], gl.float32, acc_layout)
        spare = gl.zeros([HALF, BM], gl.float32, acc_layout)  # the partial's registers (values unused)
        for ki in range(KC):
            s = it % STAGES
            mbarrier.wait(ready.index(s), (it // STAGES) & 1)
            kb = kb0 + ki
            scale = gl.load(ws_ptr + rb * NKB + kb) * gl.load(as_ptr + kb * BM + tok)
            part = warpgroup_mma(w_bufs.index(2 * s + WG), a_bufs.index(s).permute((1, 0)), spare, use_acc=False,
                                 is_async=True)  # fmt: skip
            part = warpgroup_mma_wait(num_outstanding=0, deps=(part,))
            mbarrier.arrive(empty.index(s), count=1)  # the stage's tiles are read: the producer may refill it
            acc = acc + part * scale[None, :]
            spare = part
            it += 1
        offs = item * (128 * BM) + (WG * HALF + rows)[:, None] * BM + tok[None, :]
        gl.store(out_ptr + offs, acc)


@gluon.jit
def _consumer_1(w_bufs, a_bufs, ready, empty, ws_ptr, as_ptr, out_ptr, n_items, R, KC: gl.constexpr):
    # a worker partition takes no literal arguments (Triton 3.6), hence this wrapper
    _consumer(w_bufs, a_bufs, ready, empty, ws_ptr, as_ptr, out_ptr, n_items, R, KC, 1)


@gluon.jit
def stream_gluon_kernel(w_desc, a_desc, ws_ptr, as_ptr, out_ptr, n_items, R, KC: gl.constexpr, STAGES: gl.constexpr,
                        CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr):  # fmt: skip
    w_bufs = gl.allocate_shared_memory(w_desc.dtype, [2 * STAGES, HALF, 128], w_desc.layout)
    a_bufs = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BM, 128], a_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)  # the producer's expect, then the TMA bytes
        mbarrier.init(empty.index(i), count=2)  # one arrive per consumer warpgroup
    consumer_args = (w_bufs, a_bufs, ready, empty, ws_ptr, as_ptr, out_ptr, n_items, R, KC)
    producer_args = (w_desc, a_desc, w_bufs, a_bufs, ready, empty, n_items, R, KC)
    gl.warp_specialize([(_consumer, consumer_args + (0,)), (_consumer_1, consumer_args),
                        (_producer, producer_args)], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])  # fmt: skip


def descriptors(w, a):
    """TMA descriptors of the weights ([R, 7168] fp8, [64, 128] tiles) and the activations ([BM, 7168] fp8,
    one [BM, 128] tile a K block)."""
    layout = gl.NVMMASharedLayout.get_default_for
    return (TensorDescriptor.from_tensor(w, [HALF.value, 128], layout([HALF.value, 128], gl.float8e4nv)),
            TensorDescriptor.from_tensor(a, [a.shape[0], 128], layout([a.shape[0], 128], gl.float8e4nv)))  # fmt: skip


def plan(w, ws, a, as_, out, kc: int, stages: int):
    """(arguments, constexprs, launch options) of one call over every item (out: [n_items, 128, BM]); what
    `launch` launches and the offline compile test builds. 4 + 4 + 1 warps, 168 registers a thread, as
    the large-T GEMMs (setmaxnreg moves the producer's spare ones to the consumers)."""
    if a.shape[0] != BM.value:
        raise SystemExit(f"the Gluon loop is written for --bm {BM.value} (got {a.shape[0]})")
    args = (*descriptors(w, a), ws, as_, out, out.shape[0], w.shape[0])
    return args, dict(KC=kc, STAGES=stages, CONSUMER_REGS=232, PRODUCER_REGS=40), dict(num_warps=4, maxnreg=168)


def launch(w, ws, a, as_, out, grid: int, kc: int, stages: int):
    """One call on `grid` programs."""
    args, consts, opts = plan(w, ws, a, as_, out, kc, stages)
    return stream_gluon_kernel[(grid,)](*args, **consts, **opts)


def main() -> int:
    """Offline: compile the loop for sm_90 as `launch` would for T = 1's 88 MB, print registers, stack,
    shared memory, warps and the telling SASS counts (scripts/compile_check.py's report)."""
    ap = argparse.ArgumentParser(description="compile the Gluon stream loop for sm_90 (no GPU needed)")
    ap.add_argument("--stages", type=int, default=6)
    ap.add_argument("--kc", type=int, default=8)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import compile_check  # clears TRITON_INTERPRET: compile for a GPU

    meta = torch.device("meta")
    w = torch.empty(12288, 7168, dtype=torch.float8_e4m3fn, device=meta)  # T = 1's W1: 3 experts
    a = torch.empty(BM.value, 7168, dtype=torch.float8_e4m3fn, device=meta)
    out = torch.empty(12288 // 128 * (NKB.value // args.kc), 128, BM.value, device=meta)
    w_scale, a_scale = torch.empty(96, NKB.value, device=meta), torch.empty(NKB.value, BM.value, device=meta)
    plan_args, consts, opts = plan(w, w_scale, a, a_scale, out, args.kc, args.stages)
    print(json.dumps(compile_check.compile_one(stream_gluon_kernel, plan_args, consts, opts, 90)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
