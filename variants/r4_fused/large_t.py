"""Rung 4 above the fused path's T on Hopper (issue 8): both GEMMs as grouped Gluon kernels over the
permuted rows, between rung 3's routing, sort and finalize launches:

    routing -> sort -> permute -> GEMM1 (Gluon) -> GEMM2 (Gluon) -> finalize      (`permute.py`,
                                                                                  `gemm1_gluon.py`,
                                                                                  `gemm2_gluon.py`)

The permute launch numbers each expert's rows in tile-padded 128-row tiles (row ids, each tile's expert,
the tile count) and copies each tile's activation rows and scales into contiguous tiles, which GEMM1
loads by TMA (Hopper's TMA cannot gather rows; with `gather_rows` GEMM1's producer gathers them from
hidden_states by cp.async instead, measured slower, v66); GEMM1 writes C in that row order, so GEMM2 loads C's
tiles with TMA too; GEMM2 writes output rows and parks the rows of multi-expert tokens exactly as rung
3's GEMM2 does, for rung 3's finalize. GEMM2 is launched with PDL while GEMM1 runs
(`gemm2_under_gemm1`): its CTAs take the SMs of GEMM1's finished ones and start a tile once GEMM1 has
signalled all of its C (`tile_done`, zeroed by the permute). Elsewhere (sm_100, the CPU interpreter) a
call is rung 3's as it is.

Host path: the first call goes through Triton's dispatcher (compiles, and prepares each launch's C
launcher); later calls launch every kernel straight through its C launcher (`Kernel.fast`, tensors as
arguments: no argument binding). The Gluon kernels' TMA descriptors of the workspace's own buffers are
built once; those of the weights per call, from the weights given (a few us: plain Python objects; the
launcher encodes every descriptor into a CUtensorMap).
"""

import torch
import triton

from . import gemm1_gluon, gemm2_gluon, permute
from .moe import Workspace as Rung3Workspace
from .moe import run as run_rung3
from .rows import max_tiles
from .tile_table import tiles_for


class Workspace(Rung3Workspace):
    """Rung 3's workspace of T tokens (its scratch and its routing, sort and finalize launches) plus the
    permuted activations, the permuted C and the permute and two Gluon GEMM launches."""

    def __init__(self, device, T, E, NL, H, I, cap, sms=None, tiles=None, gemm2_columns=256, group_m=8,
                 shared_lo_scale=True, skip_padding_halves=True, gemm2_under_gemm1=True,
                 dynamic_items=True, gather_rows=False):  # fmt: skip
        super().__init__(device, T, E, NL, H, I, tiles or tiles_for(T, cap), sms)
        t = self.tiles
        if t.inline_rows or t.fused_routing or self.n_terms != 2 or not t.bf16_partial_rows:
            raise ValueError(f"T={T}: the large-T path needs the routing and sort launches, the hi/lo C and bf16 "
                             "parked rows")  # fmt: skip
        self.cq = self.cs = None  # rung 3's C (rows by id): this path keeps C in permuted rows instead
        self.perm_max_tiles = max_tiles(T, NL, permute.BM)
        mp = self.perm_max_tiles * permute.BM
        # the permuted copy of the activation rows and scales; when GEMM1 gathers them itself (gather_rows)
        # one tile's worth, which only its (unused) TMA descriptors point at
        rows_copied = permute.BM if gather_rows else mp
        self.a_perm = torch.empty(rows_copied, H, dtype=torch.float8_e4m3fn, device=device)
        self.sa_perm = torch.empty(H // 128, rows_copied, dtype=torch.float32, device=device)
        self.rid_perm = torch.empty(mp, dtype=torch.int32, device=device)
        self.tile_expert = torch.empty(self.perm_max_tiles, dtype=torch.int32, device=device)
        self.n_tiles = torch.empty(1, dtype=torch.int32, device=device)
        self.tile_done = torch.zeros(self.perm_max_tiles, dtype=torch.int32, device=device)  # GEMM1's signals
        self.claims = torch.zeros(8, dtype=torch.int32, device=device)  # zeroed by the permute as one
        self.gemm1_claims, self.gemm2_claims = self.claims[0:1], self.claims[4:5]  # the GEMMs' item counters
        self.cq_perm = torch.empty(mp, 2 * I, dtype=torch.float8_e4m3fn, device=device)
        self.cs_perm = torch.empty(2 * I // 128, mp, dtype=torch.float32, device=device)
        self.obuf_bf16 = self.obuf.view(torch.bfloat16)  # GEMM2's parked rows, as rung 3's finalize reads them
        # H columns per GEMM2 item: 256 (two accumulators) measured 8-14% faster than 128 (v12-v13)
        self.gemm2_columns = gemm2_columns
        # C's lo term stored in its hi term's scale: GEMM2 sums hi and lo in one wgmma group and promotes once
        # per I block (v18-v19: the layer -4..-7%); False: rung 3's pair, each term in its own scale
        self.shared_lo_scale = shared_lo_scale
        # a GEMM consumer warpgroup whose 64 rows are all padding issues no MMA (v51); False: as before, for
        # comparisons (the output is the same bits either way)
        self.skip_padding_halves = skip_padding_halves
        # GEMM2 launched with PDL while GEMM1 runs: its CTAs take the SMs of GEMM1's finished ones and start
        # each tile once GEMM1's 2 x I/128 signals of that tile (one per warpgroup and column block) are in
        # (v60); False: GEMM2 starts after GEMM1, for comparisons (the same bits either way)
        self.gemm2_under_gemm1 = gemm2_under_gemm1
        # both Gluon GEMMs claim their items from a counter (v61: a CTA that starts late or has short items
        # takes more); False: a static stride (`item_ring.py`)
        self.dynamic_items = dynamic_items
        # GEMM1's producer gathers each tile's activation rows and scales from hidden_states by cp.async, and
        # the permute launch only lays out the row ids (v65); False, the default: the permute copies the rows
        # and GEMM1 loads the copy by TMA (v66: the layer -1..-2% at T = 14107, the same at 11948, since the
        # fence that cp.async's rows need before each wgmma costs GEMM1 ~5% and the copy ~3..5% of the layer)
        self.gather_rows = gather_rows
        self.k_permute = permute.launch_for(self)
        # group_m: M tiles per group of the GEMMs' grouped item order (tiles of a group share weight panels)
        self.k_gemm1_gluon = gemm1_gluon.launch_for(self, self.sms, group_m=group_m)
        self.k_gemm2_gluon = gemm2_gluon.launch_for(self, self.sms, group_m=group_m)
        self.gemm1_fixed = gemm1_gluon.fixed_arguments(self)  # descriptors of this workspace's own buffers
        self.gemm2_fixed = gemm2_gluon.fixed_arguments(self)
        self.stream = None  # (get_stream, device index) once every launch has its C launcher

    def permute_arguments(self, hidden_states, hidden_states_scale):
        """The permute launch's arguments (shared with scripts/gemm_compile_report.py)."""
        return (hidden_states, hidden_states_scale, self.counts, self.lists, self.a_perm, self.sa_perm, self.rid_perm,
                self.tile_expert, self.n_tiles, self.tile_done, self.claims, self.T)  # fmt: skip

    def large_t_launches(self, *inputs_and_output):
        """(kernel, arguments) of each launch of a call (the contest's 11 arguments; local_off and the
        scaling factor as the launches pass them, an int and a float), in order: rung 3's routing and
        sort, permute, the two Gluon GEMMs, rung 3's finalize. A generator: each launch's arguments are
        built when it is reached, so a caller that launches as it goes has the routing running on the GPU
        while the GEMMs' weight descriptors are made (~15 us of host time, v62)."""
        args = list(inputs_and_output)
        args[8], args[9] = int(args[8]), float(args[9])
        route, sort, _gemm1, _gemm2, finalize = self.launches(*args)
        hidden_states, hidden_states_scale, w1, w1s, w2, w2s, local_off = args[2:9]
        yield route
        yield sort
        yield self.k_permute, self.permute_arguments(hidden_states, hidden_states_scale)
        yield self.k_gemm1_gluon, gemm1_gluon.arguments(self, hidden_states, hidden_states_scale, w1, w1s)
        yield self.k_gemm2_gluon, gemm2_gluon.arguments(self, w2, w2s, args[10], local_off)
        yield finalize

    def run(self, *inputs_and_output):
        """One call (the contest's 11 arguments). The kernels read through TMA descriptors and 16-byte
        cp.async and are compiled for 16-byte aligned pointers: a call with any tensor off that alignment
        takes rung 3's kernels instead."""
        if any(a.data_ptr() & 15 for a in inputs_and_output if isinstance(a, torch.Tensor)):
            return run_rung3(*inputs_and_output)
        if self.stream is not None:
            stream = self.stream[0](self.stream[1])
            for kernel, kernel_args in self.large_t_launches(*inputs_and_output):
                kernel.fast(stream, *kernel_args)
            return inputs_and_output[10]
        launches = list(self.large_t_launches(*inputs_and_output))
        for kernel, kernel_args in launches:
            kernel.slow(*kernel_args)
        if all(kernel.fast_ready for kernel, _ in launches):
            self.stream = (triton.runtime.driver.active.get_current_stream, inputs_and_output[2].get_device())
        return inputs_and_output[10]
