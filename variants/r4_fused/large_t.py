"""Rung 4 above the fused path's T (issue 8, first step): rung 3's launches, with GEMM1 on Hopper done
by the permute launch and the grouped Gluon GEMM1 (`permute.py`, `gemm1_gluon.py`):

    routing -> sort -> permute -> GEMM1 (Gluon, sm_90) -> GEMM2 (rung 3) -> finalize (rung 3)

GEMM1 writes C exactly where rung 3's GEMM1 writes it (row ids, hi/lo pair), so everything after it is
rung 3's. Elsewhere (sm_100, the CPU interpreter) a call is rung 3's as it is. Every launch goes
through the dispatcher: at T > 1024 a call takes milliseconds, and the Gluon kernel's TMA descriptors
are built per call from the weights it is given.
"""

import torch

from . import gemm1_gluon, permute
from .moe import Workspace as Rung3Workspace
from .rows import max_tiles
from .tile_table import tiles_for


class Workspace(Rung3Workspace):
    """Rung 3's workspace of T tokens (its scratch, routing, sort, GEMM2 and finalize launches) plus the
    permuted activations and the permute launch that the grouped GEMM1 reads."""

    def __init__(self, device, T, E, NL, H, I, cap, sms=None, tiles=None):
        super().__init__(device, T, E, NL, H, I, tiles or tiles_for(T, cap), sms)
        if self.tiles.inline_rows or self.n_terms != 2:
            raise ValueError(f"T={T}: the grouped GEMM1 needs the sort launch and the hi/lo C")
        self.perm_max_tiles = max_tiles(T, NL, permute.BM)
        mp = self.perm_max_tiles * permute.BM
        self.a_perm = torch.empty(mp, H, dtype=torch.float8_e4m3fn, device=device)
        self.sa_perm = torch.empty(H // 128, mp, dtype=torch.float32, device=device)
        self.rid_perm = torch.empty(mp, dtype=torch.int32, device=device)
        self.tile_expert = torch.empty(self.perm_max_tiles, dtype=torch.int32, device=device)
        self.n_tiles = torch.empty(1, dtype=torch.int32, device=device)
        self.k_permute = permute.launch_for(self)

    def permute_arguments(self, hidden_states, hidden_states_scale):
        """The permute launch's arguments (shared with scripts/gemm_compile_report.py)."""
        return (hidden_states, hidden_states_scale, self.counts, self.lists, self.a_perm, self.sa_perm, self.rid_perm,
                self.tile_expert, self.n_tiles, self.T)  # fmt: skip

    def permute(self, hidden_states, hidden_states_scale):
        self.k_permute.slow(*self.permute_arguments(hidden_states, hidden_states_scale))

    def grouped_gemm1(self, gemm1_weights, gemm1_weights_scale):
        """C (`cq`, `cs`) from the permuted rows: the Gluon kernel (sm_90)."""
        fn, grid, args, consts, opts = gemm1_gluon.launch_plan(self, gemm1_weights, gemm1_weights_scale, self.sms)
        fn[grid](**args, **consts, **opts)

    def run(self, *inputs_and_output):
        """One call (the contest's 11 arguments): rung 3's launches in order, its GEMM1 replaced."""
        args = list(inputs_and_output)
        args[8], args[9] = int(args[8]), float(args[9])
        hidden_states, hidden_states_scale, gemm1_weights, gemm1_weights_scale = args[2:6]
        for kernel, kernel_args in self.launches(*args):
            if kernel is self.k_gemm1:
                self.permute(hidden_states, hidden_states_scale)
                self.grouped_gemm1(gemm1_weights, gemm1_weights_scale)
            else:
                kernel.slow(*kernel_args)
        return args[10]
