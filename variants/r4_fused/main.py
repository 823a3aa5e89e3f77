"""Rung 4: the whole MoE layer as one persistent Triton launch for T <= 1024 (`persistent.py`);
above, on Hopper the large-T path (`large_t.py`: both GEMMs as grouped Gluon kernels between rung 3's
routing, sort and finalize launches), elsewhere rung 3's kernels (its `moe.py`, packed beside these
files).

The host path of a call is as short as a launch: after the first call of a workload (compile, grid
sizing, scratch allocation) a call checks that the workload is the one cached and launches the compiled
kernel straight through its C launcher with integer pointers: no allocation, no torch op.
"""

import torch
import triton

from . import large_t
from .gemm_blockscaled import gluon_supported
from .launch import capability, compile_entry, meta_call_arguments
from .moe import CONTEST
from .moe import compile_plan as compile_plan_rung3
from .moe import run as run_rung3
from .persistent import Workspace
from .routing import route  # noqa: F401  (the harness measures routing agreement through it)
from .tiles import MAX_FUSED_T


class Runner:
    """A callable with `run`'s signature over its own cache of workspaces: `Runner()` is the solution;
    `Runner(tiles)` forces one tile shape for every T (for experiments; see scripts/r4_tiles_sweep.py);
    `Runner(large_t_gluon=False)` keeps rung 3's kernels above the fused T even where the Gluon large-T
    path runs (sm_90), for comparisons; `Runner(large_t_args={...})` builds its large-T workspaces with
    those arguments of `large_t.Workspace` (tiles, gemm2_columns, ...: experiments); `Runner(fused_max_t=n)`
    takes the large-T path above n tokens instead of above MAX_FUSED_T (experiments)."""

    def __init__(self, tiles=None, large_t_gluon=True, large_t_args=None, fused_max_t=MAX_FUSED_T):
        self.tiles = tiles
        self.fused_max_t = fused_max_t
        self.large_t_gluon = large_t_gluon
        self.large_t_args = large_t_args or {}
        self.workspaces: dict = {}
        self.last = None  # the workspace of the last call, once its fast path is ready

    def workspace(self, device, T, E, NL, H, I) -> Workspace:
        key = (device, T, E, NL, H, I)
        ws = self.workspaces.get(key)
        if ws is None:
            ws = self.workspaces[key] = Workspace(device, T, E, NL, H, I, self.tiles, capability(device))
        return ws

    def __call__(
        self,
        routing_logits,
        routing_bias,
        hidden_states,
        hidden_states_scale,
        gemm1_weights,
        gemm1_weights_scale,
        gemm2_weights,
        gemm2_weights_scale,
        local_expert_offset,
        routed_scaling_factor,
        output,
    ):
        ws = self.last
        if (  # the fast path: the same workload as the last call, kernel compiled
            ws is not None
            and ws.T == routing_logits.shape[0]
            and ws.E == routing_logits.shape[1]
            and ws.w1_shape == gemm1_weights.shape
            and hidden_states.get_device() == ws.dev_index
        ):
            ptrs = (
                routing_logits.data_ptr(), routing_bias.data_ptr(), hidden_states.data_ptr(),
                hidden_states_scale.data_ptr(), gemm1_weights.data_ptr(), gemm1_weights_scale.data_ptr(),
                gemm2_weights.data_ptr(), gemm2_weights_scale.data_ptr(), output.data_ptr(),
            )  # fmt: skip
            if not (ptrs[0] | ptrs[1] | ptrs[2] | ptrs[3] | ptrs[4] | ptrs[5] | ptrs[6] | ptrs[7] | ptrs[8]) & 15:
                ws.kernel.fast(
                    ws.get_stream(ws.dev_index), *ptrs, *ws.scratch_ptrs, ws.T, int(local_expert_offset),
                    float(routed_scaling_factor),
                )  # fmt: skip
                return output
            # a misaligned input (the compiled kernel assumes 16-byte alignment): the dispatcher path below
        T, E = routing_logits.shape
        NL, N1, H = gemm1_weights.shape
        if T == 0:
            return output
        if T > self.fused_max_t:
            self.last = None
            large_t_call = run_rung3
            if self.large_t_gluon and gluon_supported(hidden_states.device):
                key = ("large", hidden_states.device, T, E, NL, H, N1 // 2)
                if key not in self.workspaces:
                    self.workspaces[key] = large_t.Workspace(
                        hidden_states.device, T, E, NL, H, N1 // 2, capability(hidden_states.device),
                        **self.large_t_args,
                    )
                large_t_call = self.workspaces[key].run
            return large_t_call(
                routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights,
                gemm1_weights_scale, gemm2_weights, gemm2_weights_scale, local_expert_offset, routed_scaling_factor,
                output,
            )  # fmt: skip
        ws = self.workspace(hidden_states.device, T, E, NL, H, N1 // 2)
        ws.kernel.slow(
            routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
            gemm2_weights, gemm2_weights_scale, output, *ws.scratch, T, int(local_expert_offset),
            float(routed_scaling_factor),
        )  # fmt: skip
        if ws.kernel.fast_ready:
            ws.scratch_ptrs = tuple(t.data_ptr() for t in ws.scratch)
            ws.get_stream = triton.runtime.driver.active.get_current_stream
            ws.dev_index = hidden_states.get_device()
            self.last = ws
        return output


_SOLUTION = Runner()


def run(
    routing_logits,
    routing_bias,
    hidden_states,
    hidden_states_scale,
    gemm1_weights,
    gemm1_weights_scale,
    gemm2_weights,
    gemm2_weights_scale,
    local_expert_offset,
    routed_scaling_factor,
    output,
):
    return _SOLUTION(
        routing_logits, routing_bias, hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale,
        gemm2_weights, gemm2_weights_scale, local_expert_offset, routed_scaling_factor, output,
    )  # fmt: skip


def compile_plan(T: int, cap: int, sms: int = 132, geometry=CONTEST):
    """The kernels a call of T tokens launches on a GPU of capability `cap` (scripts/compile_check.py):
    the one persistent kernel up to MAX_FUSED_T; above, the Gluon large-T path's launches on sm_90 and
    rung 3's elsewhere. Built on the "meta" device."""
    E, NL, H, I = (geometry[k] for k in ("E", "NL", "H", "I"))
    if T > MAX_FUSED_T and cap != 90:
        return compile_plan_rung3(T, cap, sms, geometry)
    args = meta_call_arguments(T, E, NL, H, I)
    if T > MAX_FUSED_T:
        ws = large_t.Workspace(torch.device("meta"), T, E, NL, H, I, cap, sms)
        return [compile_entry(kernel, kernel_args) for kernel, kernel_args in ws.large_t_launches(*args)]
    ws = Workspace(torch.device("meta"), T, E, NL, H, I, None, cap, sms)
    # the kernel takes the output before its scratch
    return [compile_entry(ws.kernel, (*args[:8], args[10], *ws.scratch, T, args[8], args[9]))]
