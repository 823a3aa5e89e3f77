"""Rung 4's tile table: one fixed shape per bucket of T (no autotuning inside the contest's 300 s)."""

from dataclasses import dataclass, replace

MAX_FUSED_T = 1024  # up to this T one persistent launch does the whole layer; above, rung 3's path


@dataclass(frozen=True)
class Tiles:
    rows_per_tile: int  # BM: (token, slot) rows of one expert per M tile, shared by both GEMMs
    h_block: int  # BH: output columns of one GEMM2 accumulator (128: one W2 scale block; 64. 256: v90, slower)
    h_blocks_per_item: int  # H blocks one GEMM2 item streams back to back (a power of two dividing H / BH)
    split_k: int  # GEMM1 K splits (small T: few experts are hit, so each weight panel is split)
    route_in_every_program: bool  # tiny T: every program routes all tokens itself (no wait on routing)
    tokens_per_route_item: int  # otherwise: tokens routed per routing work item
    sorted_rows: bool  # a sort phase lists each expert's rows (else each program derives them from the ids)
    swapped: bool  # weights on the MMA's M side, tokens on its N side (M tiles smaller than 64 rows)
    prefetch_w2: bool  # a GEMM2 item asks the L2 for its whole weight block (bulk) before it waits for GEMM1
    num_warps: int
    num_stages: int
    tokens_per_finalize_block: int
    tail_waves: int = 0  # GEMM2's last items, about this many waves of programs' worth, one H block each
    stream_k: bool = False  # GEMM1 as one equal share of all K blocks per program (split_k unused)
    split_k_fill: bool = False  # on the GPU, per call: split_k or twice it, whichever fills GEMM1's last wave
    # of programs better (the experts hit, hence the items, are known only there)
    gemm2_step_pairs: bool = True  # GEMM2 loads two (H block, K block) steps per pipeline stage (else one:
    # half the shared memory)
    gemm2_stages: int = 0  # GEMM2's loop its own pipeline depth (0: num_stages, the kernel's; v86)
    gemm2_swapped: bool = False  # GEMM2 with swapped operands (C's hi and lo terms side by side, one dot a step)
    # even where GEMM1's are not
    finalize_listed: bool = True  # with sorted rows: finalize items over a list of the tokens with several local
    # experts (built by one more sort item), not over all T tokens (v84-v85: T = 901 -13..-18 us)
    max_registers: int = 0  # registers per thread at most (the compiler spills above): more CTAs an SM; 0: its choice
    trace: bool = False  # record every work item's start, ready and end times (experiments only)


def tiles_for(T: int, cap: int = 90, interpret: bool = False) -> Tiles:
    """The shape for T tokens on compute capability `cap` (x 10). Under the CPU interpreter no inline
    PTX (the L2 prefetch) is used."""
    if T > MAX_FUSED_T:
        raise ValueError(f"T={T} is above the fused path's {MAX_FUSED_T}")
    # T <= 128: GEMM2 one step a stage at 3 stages (gemm2_step_pairs=False: 104 KB of shared memory, 2 CTAs
    # an SM): -3..-8% at T = 7..80 (v31, v34), -3..-6% at T = 1 (v40, five processes); its one bad trial
    # (v32) was the race v32/v33 fixed, and 30 checked calls a T on fresh inputs passed (v34)
    two_ctas = dict(gemm2_step_pairs=False, num_stages=3)
    if T <= 4:  # stream-K: one equal share of GEMM1's K blocks per program (v9: 83 against 89 us at T = 1,
        # the mean of four rounds; split-K 2 before; split-K 4 or 8 on two CTAs: +4..+10%, v40)
        t = Tiles(16, 128, 1, 2, True, 1, False, True, False, 4, tokens_per_finalize_block=8, stream_k=True,
                  **two_ctas)  # fmt: skip
    elif T <= 8:  # routing items, not every program routing all T (v22: T = 7 -5..-6%, 3 rounds of 3;
        # the GEMM phase started 9.5 us in when every program routed 7 tokens); split-K 2 or 8: no gain (v40)
        t = Tiles(16, 128, 1, 4, False, 1, False, True, False, 4, tokens_per_finalize_block=8, **two_ctas)
    # above T = 8 GEMM2 items take 2 H blocks (4: +1..+4% at T = 52 and 80, the same at 53-62, v39), the
    # last two waves of them one H block each (a short tail); T <= 16 split-K 2 (12-16 tiles of 16 GEMM1
    # items are under a wave of 264 programs: -3..-4% at T = 14, -1..-2% at 16, v39), none above (T = 32:
    # +2%, v40)
    # 8 < T <= 16: split-K 4 where that fills GEMM1's last wave better (T = 15's 12 tiles: split-K 4 -2.7%
    # in v44's five rounds, -2.9 / -3.3 us paired in v71; T = 14 and 16 keep 2, which v44 found faster there)
    # 8 < T <= 128: GEMM2's loop 4 stages deep (GEMM1's 3 set the shared memory: still 104 KB): paired -3.8 /
    # -4.2 / -5.3 us at T = 15 / 56 / 80, no change at 1, 7 and 32 (v86)
    elif T <= 128:
        t = Tiles(16, 128, 2, 2 if T <= 16 else 1, False, 1, False, True, False, 4, tokens_per_finalize_block=32,
                  tail_waves=2, split_k_fill=T <= 16, gemm2_stages=4, **two_ctas)  # fmt: skip
    else:  # 8 warps: one CTA an SM whatever the stages (one GEMM2 step a stage at 3 stages: +6% at T = 901, v31);
        # sm_90: the finalize in 32-token blocks (64 spilled its [64, 128] sum: stack 112 -> 32 B at T = 901;
        # -0.5..-2.6 us on the GPU side in four pairings, v91, v95); sm_100 keeps 64 (offline at 32: loop
        # spills 12 -> 16, never measured)
        t = Tiles(64, 128, 4, 1, False, 8, True, False, False, 8, 3, 32 if cap // 10 == 9 else 64, tail_waves=2)
    if cap // 10 == 10 and T <= 128:  # sm_100 (B200; offline compile report only, never measured): the
        # 4-warp shapes spill there (stack 32-280 B; 3 / 1 / 20 / 21 LDL/STL in the K loops' listing at
        # T = 1 / 7 / 16 / 56: tcgen05 reads each K block's partial back into registers to scale it); 8 warps
        # spill nowhere (stack 0). 5 stages of one step keep H200's two-CTA shape's steps in flight an SM (174 KB); at
        # T <= 4 two steps a stage at 4 stages (v37)
        t = replace(t, num_warps=8, gemm2_stages=0,
                    **(dict(gemm2_step_pairs=True, num_stages=4) if T <= 4 else dict(num_stages=5)))
    if interpret:
        t = replace(t, prefetch_w2=False)
    return t
