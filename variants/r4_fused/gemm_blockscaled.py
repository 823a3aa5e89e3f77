"""Block-scaled FP8 GEMM, the contest's scaling, on a bare GEMM (issue 8, first step).

    C[M, N] (bf16) = sum over 128-wide K blocks k of (A[:, k] @ B[:, k]^T) * a_scale[k, m] * b_scale[n // 128, k]

A [M, K] fp8 e4m3, K contiguous, scaled per row and 128-K block: a_scale [K/128, M], M contiguous (the
layout of the contest's hidden_states_scale). B [N, K] fp8 e4m3, K contiguous, scaled per 128x128 block:
b_scale [N/128, K/128] (the layout of the contest's weight scales). Scales are arbitrary signed fp32.

Two kernels, each beside its launcher:

- `blockscaled_gemm_triton`: plain Triton, persistent over output tiles, TMA tensor descriptors, the
  promotion written plainly (`acc += dot * scale`). Portable (sm_90, sm_100) and runs in the CPU
  interpreter; `scaled=False` is the same kernel without scales (the plain FP8 ceiling).
- `blockscaled_gemm_gluon`: Hopper only (wgmma). Warp-specialized: one TMA producer warp and two
  independent consumer warpgroups of 64 rows each; while one warpgroup scales its K block's partial
  into its fp32 accumulator, the other's wgmma keeps the tensor core busy (`in_flight=False`, the
  default). `in_flight=True` also keeps a warpgroup's next wgmma in flight while it promotes (two
  partials); Triton 3.6 + ptxas serialize that variant's wgmmas (C7514), see GEMM_NOTES.md.
  `scaled=False`: the same kernel, barriers and waits without the promotion (each K block's wgmma
  accumulates straight into the accumulator): what this structure reaches without scales.

`blockscaled_gemm` picks the Gluon kernel on sm_90 and the Triton one elsewhere.
"""

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

SCALE_BLOCK = 128  # the contest's quantization block, along K and along B's rows


def make_inputs(M, N, K, device="cpu", seed=0):
    """Random inputs drawn the way flashinfer-bench draws the contest's: fp8 from randn clamped to
    [-2, 2], scales from plain randn (signed, not powers of two)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randn(M, K, generator=g).clamp(-2, 2).to(torch.float8_e4m3fn)
    b = torch.randn(N, K, generator=g).clamp(-2, 2).to(torch.float8_e4m3fn)
    a_scale = torch.randn(K // SCALE_BLOCK, M, generator=g)
    b_scale = torch.randn(N // SCALE_BLOCK, K // SCALE_BLOCK, generator=g)
    return [t.to(device) for t in (a, a_scale, b, b_scale)]


def reference(a, a_scale, b, b_scale):
    """C in fp32: dequantize both operands, one fp32 matmul."""
    x = a.float() * a_scale.t().repeat_interleave(SCALE_BLOCK, dim=1)
    w = b.float() * b_scale.repeat_interleave(SCALE_BLOCK, dim=0).repeat_interleave(SCALE_BLOCK, dim=1)
    return x @ w.t()


def rel_l2(out, ref):
    return ((out.float() - ref).norm() / ref.norm()).item()


def _check_shapes(a, a_scale, b, b_scale):
    M, K = a.shape
    N = b.shape[0]
    assert a.dtype == b.dtype == torch.float8_e4m3fn and b.shape[1] == K
    assert K % SCALE_BLOCK == 0 and N % SCALE_BLOCK == 0, "K and N must be multiples of the scale block"
    assert a.stride(1) == 1 and b.stride(1) == 1, "A and B must be K-contiguous"
    assert a_scale.shape == (K // SCALE_BLOCK, M) and a_scale.stride(1) == 1
    assert b_scale.shape == (N // SCALE_BLOCK, K // SCALE_BLOCK) and b_scale.is_contiguous()
    return M, N, K


def _num_sms(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a few programs, so that the persistent loop runs more than once


# --------------------------------------------------------------------------------------------------
# (a) Plain Triton: persistent, TMA descriptors, promotion written plainly.
# --------------------------------------------------------------------------------------------------


@triton.jit
def _grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Tile index -> (pid_m, pid_n), GROUP_M row panels at a time: the tiles running together share
    their B panels (the weights) and a few A panels, so both stay in L2."""
    per_group = GROUP_M * num_pid_n
    first_m = (tile // per_group) * GROUP_M
    rows = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile % per_group) % rows
    pid_n = (tile % per_group) // rows
    return pid_m, pid_n


@triton.jit
def blockscaled_gemm_triton_kernel(
    a_desc, b_desc, c_desc, a_scale_ptr, b_scale_ptr, M, N, K,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
    SCALED: tl.constexpr, WARP_SPECIALIZE: tl.constexpr, NUM_PROGRAMS: tl.constexpr,
):  # fmt: skip
    tl.static_assert(BK == 128 and BN == 128, "one A scale per row and one B scale per tile and K block")
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    num_kb = tl.cdiv(K, BK)
    for tile in tl.range(tl.program_id(0), num_pid_m * num_pid_n, NUM_PROGRAMS, warp_specialize=WARP_SPECIALIZE):
        pid_m, pid_n = _grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M)
        rows = pid_m * BM + tl.arange(0, BM)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for kb in range(num_kb):
            a = a_desc.load([pid_m * BM, kb * BK])
            b = b_desc.load([pid_n * BN, kb * BK])
            if SCALED:
                sa = tl.load(a_scale_ptr + kb * M + rows, mask=rows < M, other=0.0)
                sb = tl.load(b_scale_ptr + pid_n * num_kb + kb)
                acc += tl.dot(a, b.T) * (sa[:, None] * sb)
            else:
                acc = tl.dot(a, b.T, acc)
        c_desc.store([pid_m * BM, pid_n * BN], acc.to(c_desc.dtype))


def triton_launch(a, a_scale, b, b_scale, out, *, scaled=True, warp_specialize=False, BM=128, stages=4,
                  num_warps=8, group_m=8):  # fmt: skip
    """(kernel, grid, args, constexprs, options) of one launch: shared by the launcher and the offline
    compile report, so that the report compiles exactly what runs."""
    M, N, K = _check_shapes(a, a_scale, b, b_scale)
    BN = BK = SCALE_BLOCK
    a_desc = TensorDescriptor.from_tensor(a, [BM, BK])
    b_desc = TensorDescriptor.from_tensor(b, [BN, BK])
    c_desc = TensorDescriptor.from_tensor(out, [BM, BN])
    num_programs = min(_num_sms(a.device), triton.cdiv(M, BM) * triton.cdiv(N, BN))
    args = dict(a_desc=a_desc, b_desc=b_desc, c_desc=c_desc, a_scale_ptr=a_scale, b_scale_ptr=b_scale, M=M, N=N, K=K)
    consts = dict(BM=BM, BN=BN, BK=BK, GROUP_M=group_m, SCALED=scaled, WARP_SPECIALIZE=warp_specialize,
                  NUM_PROGRAMS=num_programs)  # fmt: skip
    return blockscaled_gemm_triton_kernel, (num_programs,), args, consts, dict(num_warps=num_warps, num_stages=stages)


def _launch(make_launch, a, a_scale, b, b_scale, out, config):
    """Run one version: `make_launch` (a version's `*_launch`) plans it, this launches it."""
    if out is None:
        out = torch.empty(a.shape[0], b.shape[0], dtype=torch.bfloat16, device=a.device)
    kernel, grid, args, consts, opts = make_launch(a, a_scale, b, b_scale, out, **config)
    kernel[grid](**args, **consts, **opts)
    return out


def blockscaled_gemm_triton(a, a_scale, b, b_scale, out=None, **config):
    """Version (a). `scaled=False` ignores the scales: the same kernel's plain FP8 ceiling."""
    return _launch(triton_launch, a, a_scale, b, b_scale, out, config)


# --------------------------------------------------------------------------------------------------
# (b) Gluon, Hopper: warp-specialized, two accumulators in flight per consumer warpgroup.
# --------------------------------------------------------------------------------------------------

try:  # Gluon ships with Triton 3.6; keep the portable path importable without it
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_init,
        warpgroup_mma_wait,
    )
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor as GluonTensorDescriptor

    HAVE_GLUON = True
except ImportError:  # pragma: no cover
    HAVE_GLUON = False

HALF_M = 64  # rows per consumer warpgroup: one m64 wgmma
N_CONSUMERS = 2  # consumer warpgroups, so a tile is 128 rows

if HAVE_GLUON:

    def fp8_tile_layout(rows):
        """The shared-memory layout of an fp8 [rows, 128] TMA tile (a wgmma operand)."""
        return gl.NVMMASharedLayout.get_default_for([rows, SCALE_BLOCK], gl.float8e4nv)

    def row_scale_layout():
        """The shared-memory layout of a [1, rows] fp32 vector of row scales (no swizzle)."""
        return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)

    def row_scaled_descriptors(values, scales, rows=HALF_M):
        """TMA descriptors of an fp8 operand [M, K] (K contiguous) in [rows, 128] tiles and of its row
        scales [K / 128, M] in [1, rows] vectors: the A side of the Gluon kernels."""
        return (GluonTensorDescriptor.from_tensor(values, [rows, SCALE_BLOCK], fp8_tile_layout(rows)),
                GluonTensorDescriptor.from_tensor(scales, [1, rows], row_scale_layout()))  # fmt: skip

    @gluon.jit
    def _gl_grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M: gl.constexpr):
        per_group = GROUP_M * num_pid_n
        first_m = (tile // per_group) * GROUP_M
        rows = gl.minimum(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (tile % per_group) % rows
        pid_n = (tile % per_group) // rows
        return pid_m, pid_n

    @gluon.jit
    def _gl_producer(a_desc, b_desc, sa_desc, a_bufs, b_bufs, sa_bufs, ready, empty, M, N, K, GROUP_M):
        """One warp: TMA loads of every tile's K blocks (both A halves, their 64 A scales each, and B)
        into a ring of stages, as far ahead as the ring allows; it crosses tile boundaries, so the next
        tile's first blocks load under this tile's last."""
        BH: gl.constexpr = a_desc.block_type.shape[0]
        BK: gl.constexpr = a_desc.block_type.shape[1]
        BN: gl.constexpr = b_desc.block_type.shape[0]
        STAGES: gl.constexpr = b_bufs.shape[0]
        nbytes: gl.constexpr = 2 * a_desc.block_type.nbytes + b_desc.block_type.nbytes + 2 * sa_desc.block_type.nbytes
        num_pid_m = gl.cdiv(M, 2 * BH)
        num_pid_n = gl.cdiv(N, BN)
        num_kb = gl.cdiv(K, BK)
        it = 0
        for tile in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            pid_m, pid_n = _gl_grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M)
            for kb in range(num_kb):
                s = it % STAGES
                # the stage is free once both consumers released it; a fresh barrier passes parity 1
                mbarrier.wait(empty.index(s), ((it // STAGES) & 1) ^ 1)
                bar = ready.index(s)
                mbarrier.expect(bar, nbytes)
                for h in gl.static_range(2):
                    m = pid_m * 2 * BH + h * BH
                    tma.async_copy_global_to_shared(a_desc, [m, kb * BK], bar, a_bufs.index(2 * s + h))
                    tma.async_copy_global_to_shared(sa_desc, [kb, m], bar, sa_bufs.index(2 * s + h))
                tma.async_copy_global_to_shared(b_desc, [pid_n * BN, kb * BK], bar, b_bufs.index(s))
                it += 1

    @gluon.jit
    def _gl_issue(a_bufs, b_bufs, sa_rows, ready, it, spare, sb_ptr, kb, WG: gl.constexpr, row_layout: gl.constexpr):
        """Wait for stage it % STAGES, start its wgmma into the registers of `spare` (use_acc=False: its
        values are ignored), and read the block's scales while the tensor core works."""
        STAGES: gl.constexpr = b_bufs.shape[0]
        s = it % STAGES
        mbarrier.wait(ready.index(s), (it // STAGES) & 1)
        part = warpgroup_mma(a_bufs.index(2 * s + WG), b_bufs.index(s).permute((1, 0)), spare, use_acc=False,
                             is_async=True)  # fmt: skip
        sa = sa_rows.index(2 * s + WG).load(row_layout)
        sb = gl.load(sb_ptr + kb)
        return part, sa, sb, s

    @gluon.jit
    def _gl_consumer(a_bufs, b_bufs, sa_bufs, ready, empty, c_desc, c_bufs, b_scale_ptr, M, N, K, GROUP_M,
                     WG: gl.constexpr, IN_FLIGHT: gl.constexpr, SCALED: gl.constexpr = True):  # fmt: skip
        """One warpgroup, rows [WG*64, WG*64+64) of every tile. Per K block the wgmma writes a fresh
        partial (use_acc=False), which is scaled by a_scale[row] * b_scale into the fp32 accumulator.
        IN_FLIGHT: wgmma k+1 is issued before the partial of block k is waited for and promoted.
        SCALED=False: no promotion; each K block's wgmma accumulates into the accumulator, waited for and
        its stage released as in the serial order (the same barriers)."""
        BH: gl.constexpr = c_desc.block_type.shape[0]
        BN: gl.constexpr = c_desc.block_type.shape[1]
        BK: gl.constexpr = a_bufs.shape[2]
        STAGES: gl.constexpr = b_bufs.shape[0]
        mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 32])
        row_layout: gl.constexpr = gl.SliceLayout(1, mma)
        # the A-scale stages are unswizzled rows of 64 fp32: read them as plain [stage, 64] shared memory
        sa_rows = sa_bufs._reinterpret(gl.float32, [2 * STAGES, BH], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        num_pid_m = gl.cdiv(M, 2 * BH)
        num_pid_n = gl.cdiv(N, BN)
        num_kb = gl.cdiv(K, BK)
        c_smem = c_bufs.index(WG)
        # The partials' registers are handed from one wgmma to the next, across tiles too: an
        # accumulator register written or copied by other instructions while a wgmma is in flight makes
        # ptxas serialize every wgmma of the kernel (C7514/C7515), so they are zeroed once, here.
        spare0 = gl.zeros([BH, BN], gl.float32, mma)
        spare1 = gl.zeros([BH, BN], gl.float32, mma)
        it = 0
        for tile in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            pid_m, pid_n = _gl_grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M)
            sb_ptr = b_scale_ptr + pid_n * num_kb
            acc = gl.zeros([BH, BN], gl.float32, mma)
            if IN_FLIGHT:
                # Two partials X and Y alternate, the loop unrolled by two and not peeled, so that each
                # wgmma reuses its own partial's registers and nothing is ever copied between them.
                # Iteration j: start block 2j in X, promote block 2j-1 from Y, start block 2j+1 in Y,
                # promote block 2j from X. At j = 0 Y holds no block: its scale is 0 and no stage freed.
                X = spare0
                Y = warpgroup_mma_init(spare1)  # typed as in flight, as it is at the loop's back edge
                sa_y = gl.zeros([BH], gl.float32, row_layout)
                sb_y = 0.0
                s_y = 0
                for j in range(num_kb // 2):
                    X, sa_x, sb_x, s_x = _gl_issue(a_bufs, b_bufs, sa_rows, ready, it, X, sb_ptr, 2 * j, WG, row_layout)
                    Y = warpgroup_mma_wait(num_outstanding=1, deps=(Y,))
                    acc = acc + Y * (sa_y * sb_y)[:, None]
                    mbarrier.arrive(empty.index(s_y), count=1, pred=j > 0)
                    Y, sa_y, sb_y, s_y = _gl_issue(a_bufs, b_bufs, sa_rows, ready, it + 1, Y, sb_ptr, 2 * j + 1, WG,
                                                   row_layout)  # fmt: skip
                    X = warpgroup_mma_wait(num_outstanding=1, deps=(X,))
                    acc = acc + X * (sa_x * sb_x)[:, None]
                    mbarrier.arrive(empty.index(s_x), count=1)
                    it += 2
                if num_kb % 2 == 1:  # the last block goes to X while Y drains
                    x_run, sa_x, sb_x, s_x = _gl_issue(a_bufs, b_bufs, sa_rows, ready, it, X, sb_ptr, num_kb - 1, WG,
                                                       row_layout)  # fmt: skip
                    spare1 = warpgroup_mma_wait(num_outstanding=1, deps=(Y,))
                    acc = acc + spare1 * (sa_y * sb_y)[:, None]
                    mbarrier.arrive(empty.index(s_y), count=1, pred=num_kb > 1)
                    spare0 = warpgroup_mma_wait(num_outstanding=0, deps=(x_run,))
                    acc = acc + spare0 * (sa_x * sb_x)[:, None]
                    mbarrier.arrive(empty.index(s_x), count=1)
                    it += 1
                else:
                    spare0 = X
                    spare1 = warpgroup_mma_wait(num_outstanding=0, deps=(Y,))
                    acc = acc + spare1 * (sa_y * sb_y)[:, None]
                    mbarrier.arrive(empty.index(s_y), count=1)
            elif not SCALED:  # no promotion: the structure's own ceiling
                for _kb in range(num_kb):
                    s = it % STAGES
                    mbarrier.wait(ready.index(s), (it // STAGES) & 1)
                    acc = warpgroup_mma(a_bufs.index(2 * s + WG), b_bufs.index(s).permute((1, 0)), acc,
                                        is_async=True)  # fmt: skip
                    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
                    mbarrier.arrive(empty.index(s), count=1)
                    it += 1
            else:  # the promotion between the MMAs (DeepGEMM's order per warpgroup), for comparison
                for kb in range(num_kb):
                    part, sa, sb, s = _gl_issue(a_bufs, b_bufs, sa_rows, ready, it, spare0, sb_ptr, kb, WG, row_layout)
                    spare0 = warpgroup_mma_wait(num_outstanding=0, deps=(part,))
                    acc = acc + spare0 * (sa * sb)[:, None]
                    mbarrier.arrive(empty.index(s), count=1)
                    it += 1
            # epilogue: the previous tile's TMA store has had a whole tile's time to read c_smem
            tma.store_wait(pendings=0)
            c_smem.store(acc.to(c_desc.dtype))
            fence_async_shared()
            tma.async_copy_shared_to_global(c_desc, [pid_m * 2 * BH + WG * BH, pid_n * BN], c_smem)
        tma.store_wait(pendings=0)

    # Worker partitions get their arguments as runtime values, so the constexprs of the second consumer
    # (its half, its loop) are fixed by a small wrapper (Triton 3.6: a constexpr, wrapped or not, among a
    # worker's arguments fails to compile: "'int' object has no attribute '_flatten_ir'"). The first
    # consumer is the default partition, which takes constexprs like any call.
    @gluon.jit
    def _gl_consumer_1_in_flight(a_bufs, b_bufs, sa_bufs, ready, empty, c_desc, c_bufs, b_scale_ptr, M, N, K, GROUP_M):
        _gl_consumer(a_bufs, b_bufs, sa_bufs, ready, empty, c_desc, c_bufs, b_scale_ptr, M, N, K, GROUP_M, 1, True)

    @gluon.jit
    def _gl_consumer_1_serial(a_bufs, b_bufs, sa_bufs, ready, empty, c_desc, c_bufs, b_scale_ptr, M, N, K, GROUP_M):
        _gl_consumer(a_bufs, b_bufs, sa_bufs, ready, empty, c_desc, c_bufs, b_scale_ptr, M, N, K, GROUP_M, 1, False)

    @gluon.jit
    def _gl_consumer_1_unscaled(a_bufs, b_bufs, sa_bufs, ready, empty, c_desc, c_bufs, b_scale_ptr, M, N, K, GROUP_M):
        _gl_consumer(a_bufs, b_bufs, sa_bufs, ready, empty, c_desc, c_bufs, b_scale_ptr, M, N, K, GROUP_M, 1, False,
                     False)  # fmt: skip

    @gluon.jit
    def blockscaled_gemm_gluon_kernel(a_desc, b_desc, sa_desc, c_desc, b_scale_ptr, M, N, K,
                                      GROUP_M: gl.constexpr, STAGES: gl.constexpr, IN_FLIGHT: gl.constexpr,
                                      SCALED: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                                      PRODUCER_REGS: gl.constexpr):  # fmt: skip
        BH: gl.constexpr = a_desc.block_type.shape[0]
        BK: gl.constexpr = a_desc.block_type.shape[1]
        BN: gl.constexpr = b_desc.block_type.shape[0]
        a_bufs = gl.allocate_shared_memory(a_desc.dtype, [2 * STAGES, BH, BK], a_desc.layout)
        sa_bufs = gl.allocate_shared_memory(sa_desc.dtype, [2 * STAGES, 1, BH], sa_desc.layout)
        b_bufs = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BN, BK], b_desc.layout)
        c_bufs = gl.allocate_shared_memory(c_desc.dtype, [2, BH, BN], c_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)  # the producer's expect, then the TMA bytes
            mbarrier.init(empty.index(i), count=2)  # one arrive per consumer warpgroup
        consumer_args = (a_bufs, b_bufs, sa_bufs, ready, empty, c_desc, c_bufs, b_scale_ptr, M, N, K, GROUP_M)
        producer_args = (a_desc, b_desc, sa_desc, a_bufs, b_bufs, sa_bufs, ready, empty, M, N, K, GROUP_M)
        consumer_0_args = consumer_args + (0, IN_FLIGHT, SCALED)
        if not SCALED:
            gl.warp_specialize([(_gl_consumer, consumer_0_args), (_gl_consumer_1_unscaled, consumer_args),
                                (_gl_producer, producer_args)], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])  # fmt: skip
        elif IN_FLIGHT:
            gl.warp_specialize([(_gl_consumer, consumer_0_args), (_gl_consumer_1_in_flight, consumer_args),
                                (_gl_producer, producer_args)], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])  # fmt: skip
        else:
            gl.warp_specialize([(_gl_consumer, consumer_0_args), (_gl_consumer_1_serial, consumer_args),
                                (_gl_producer, producer_args)], [4, 1], [CONSUMER_REGS, PRODUCER_REGS])  # fmt: skip


def gluon_launch(a, a_scale, b, b_scale, out, *, stages=4, in_flight=False, scaled=True, group_m=8,
                 consumer_regs=240, producer_regs=24, maxnreg=168):  # fmt: skip
    """(kernel, grid, args, constexprs, options) of one launch of version (b) (`scaled=False`: the
    scales are ignored, C = A @ B^T). 4 + 4 + 1 warps run as three warpgroups; maxnreg * 384 threads
    must fit the SM's 64K registers (168 * 384 = 64512), and setmaxnreg then moves the producer's
    unused registers to the consumers."""
    M, N, K = _check_shapes(a, a_scale, b, b_scale)
    BN = BK = SCALE_BLOCK
    assert (M * 4) % 16 == 0, "TMA needs the A-scale rows 16-byte aligned: M a multiple of 4"
    c_layout = gl.NVMMASharedLayout.get_default_for([HALF_M, BN], gl.bfloat16)
    a_desc, sa_desc = row_scaled_descriptors(a, a_scale)
    args = dict(
        a_desc=a_desc,
        b_desc=GluonTensorDescriptor.from_tensor(b, [BN, BK], fp8_tile_layout(BN)),
        sa_desc=sa_desc,
        c_desc=GluonTensorDescriptor.from_tensor(out, [HALF_M, BN], c_layout),
        b_scale_ptr=b_scale, M=M, N=N, K=K,
    )  # fmt: skip
    tiles = triton.cdiv(M, N_CONSUMERS * HALF_M) * triton.cdiv(N, BN)
    grid = (min(_num_sms(a.device), tiles),)
    assert scaled or not in_flight, "the unscaled kernel has the serial order only"
    consts = dict(GROUP_M=group_m, STAGES=stages, IN_FLIGHT=in_flight, SCALED=scaled, CONSUMER_REGS=consumer_regs,
                  PRODUCER_REGS=producer_regs)  # fmt: skip
    return blockscaled_gemm_gluon_kernel, grid, args, consts, dict(num_warps=4, maxnreg=maxnreg)


def blockscaled_gemm_gluon(a, a_scale, b, b_scale, out=None, **config):
    """Version (b): Hopper (sm_90) only."""
    return _launch(gluon_launch, a, a_scale, b, b_scale, out, config)


def gluon_supported(device):
    """The Gluon kernel is written with Hopper's wgmma: sm_90 only (Blackwell has tcgen05 instead)."""
    return HAVE_GLUON and device.type == "cuda" and torch.cuda.get_device_capability(device) == (9, 0)


def blockscaled_gemm(a, a_scale, b, b_scale, out=None):
    """The best available version: Gluon on Hopper, plain Triton elsewhere (sm_100, the interpreter)."""
    if gluon_supported(a.device):
        return blockscaled_gemm_gluon(a, a_scale, b, b_scale, out)
    return blockscaled_gemm_triton(a, a_scale, b, b_scale, out)
