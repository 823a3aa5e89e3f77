"""What a gap to the floor is made of, measured on the GPU with the protocol solutions are timed with
(`runner.time_spans`): the span of an empty Triton kernel launch and of an empty Python call (the part of
any call that is launch and host time, not kernel), the empty launch's GPU side (`runner.queued_spans`),
and dense cuBLAS FP8 GEMMs (`torch._scaled_mm`) of a workload's FLOPs (what the tensor cores do on this GPU
without routing or block scales).

Runs in a runner child (job kinds `launch` and `dense_gemm`), like a solution: CUDA only."""

from __future__ import annotations

import triton

from .geometry import Geometry
from .runner import queued_spans, time_spans


@triton.jit
def _empty_kernel(x_ptr):
    pass


def _empty_python_call(*args):
    return None


def launch_spans(device: str, settings) -> dict[str, list[float]]:
    import torch

    x = torch.empty(1, device=device)
    kernel = lambda t: _empty_kernel[(1,)](t)  # noqa: E731 - one launch, as a solution makes it
    return {
        "empty_triton_kernel": time_spans(kernel, [x], device, settings.warmup, settings.iterations),
        "empty_python_call": time_spans(_empty_python_call, [x], device, settings.warmup, settings.iterations),
        # the launch queued behind a busy GPU: what any launch costs on the GPU's side, without the host's
        "empty_triton_kernel_gpu_side": queued_spans(kernel, [x], device, settings.iterations),
    }


def dense_gemm_spans(geometry: Geometry, rows: int, device: str, settings) -> list[float]:
    """One span = GEMM1's and GEMM2's shapes with M = the workload's local rows, FP8 in, bf16 out,
    per-tensor scales: 2 * M * (H * 2I + I * H) FLOPs, the same as the layer's two GEMMs."""
    import torch

    m = max(16, -(-rows // 16) * 16)  # cuBLAS FP8 wants every dimension a multiple of 16
    h, i = geometry.hidden_size, geometry.intermediate_size

    def fp8(*shape):
        return torch.randn(*shape, device=device).clamp_(-2, 2).to(torch.float8_e4m3fn)

    one = torch.ones((), device=device)
    a1, w1, a2, w2 = fp8(m, h), fp8(2 * i, h), fp8(m, i), fp8(h, i)

    def gemms(a1, w1, a2, w2):
        torch._scaled_mm(a1, w1.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        torch._scaled_mm(a2, w2.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    return time_spans(gemms, [a1, w1, a2, w2], device, settings.warmup, settings.iterations)


def run(job):
    if not job.device.startswith("cuda"):
        raise ValueError(f"{job.kind} is measured on CUDA only (device {job.device})")
    if job.kind == "launch":
        return launch_spans(job.device, job.settings)
    from . import dataset

    ds = dataset.load(job.definition, job.dataset_root)
    return dense_gemm_spans(Geometry.from_definition(ds.definition), job.rows, job.device, job.settings)
