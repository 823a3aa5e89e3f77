"""The physical floor of a workload: weights dominate, so count what the routing actually touches."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import reference
from .geometry import Geometry


@dataclass(frozen=True)
class Hardware:
    name: str
    bandwidth: float  # bytes/s, counting bytes read + written
    fp8_rate: float  # dense FP8 FLOP/s
    source: str


# Matched by substring of the device name, first hit wins.
GPU_TABLE = [
    Hardware("H100", 3.0e12, 1.4e15, "measured for this project (TRACK_A.md section 4)"),
    Hardware("H200", 4.3e12, 1.4e15, "copy bandwidth measured on this workplace's H200; FP8 rate as H100"),
    Hardware("B200", 8.0e12, 4.5e15, "datasheet (HBM3e 8 TB/s, dense FP8 4.5 PFLOP/s), not measured"),
]


def hardware_for(device_name: str, bandwidth: float | None = None, fp8_rate: float | None = None):
    """The table's entry for this GPU, with overrides; None when nothing is known (a CPU, say)."""
    base = next((h for h in GPU_TABLE if h.name.lower() in device_name.lower()), None)
    if base is None and (bandwidth is None or fp8_rate is None):
        return None
    if base is None:
        return Hardware(device_name, bandwidth, fp8_rate, "given on the command line")
    if bandwidth is None and fp8_rate is None:
        return base
    return Hardware(base.name, bandwidth or base.bandwidth, fp8_rate or base.fp8_rate, "overridden on the command line")


@dataclass(frozen=True)
class Work:
    """What a workload's routing makes the layer touch."""

    seq_len: int
    active_experts: int  # local experts with at least one row
    local_rows: int  # (token, local expert) pairs
    bytes: int
    flops: int

    def floor_s(self, hw: Hardware) -> float:
        return max(self.bytes / hw.bandwidth, self.flops / hw.fp8_rate)

    def bound(self, hw: Hardware) -> str:
        return "memory" if self.bytes / hw.bandwidth >= self.flops / hw.fp8_rate else "compute"


def work_of(g: Geometry, routing_logits: torch.Tensor, routing_bias: torch.Tensor, local_expert_offset: int) -> Work:
    experts, _ = reference.route(routing_logits, routing_bias, 1.0)
    local = experts - local_expert_offset
    local = local[(local >= 0) & (local < g.num_local_experts)]
    active = int(torch.unique(local).numel())
    rows = int(local.numel())
    seq_len = routing_logits.shape[0]
    return Work(
        seq_len=seq_len,
        active_experts=active,
        local_rows=rows,
        bytes=active * g.weight_bytes_per_expert() + seq_len * g.bytes_per_token(),
        flops=rows * g.flops_per_local_row(),
    )
