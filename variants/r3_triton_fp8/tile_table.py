"""Rung 3's tile table: how the work of one call is cut, by T bucket and compute capability.

Fixed shapes, no autotuning (the contest's 300 s budget and identical kernels on every call). A
workspace is built from a `Tiles`; `tiles_for(T, cap)` is the table every call uses, and an experiment
passes its own `Tiles` (`dataclasses.replace(tiles_for(T, cap), ...)`) to a workspace instead.
NOTES.md has the measurements behind each choice.
"""

from dataclasses import dataclass

from .launch import next_pow2

INLINE_MAX_T = 128  # up to this T the GEMMs derive their rows from the expert ids (no sort launch)


@dataclass(frozen=True)
class Tiles:
    # how rows are found and routed
    inline_rows: bool  # GEMMs derive each expert's rows from the [T, 8] expert ids (else a sort launch)
    fused_routing: bool  # every GEMM1 program routes all T tokens itself (no routing launch; inline rows)
    routing_block_t: int  # tokens per routing program
    routing_warps: int
    sort_block_t: int  # tokens the sort kernel reads per step
    sort_warps: int  # warps of the sort program (one per local expert)
    # GEMM1: G1 = X[rows] @ W1[e]^T, SwiGLU and the FP8 re-quantization of C in its epilogue
    gemm1_block_m: int  # rows (tokens) per M tile; < 64: swapped operands (weights on the MMA's M side)
    gemm1_split_k: int  # K splits per tile (tiny T: few experts are active, their weights need more programs)
    gemm1_warps: int
    gemm1_stages: int
    gemm1_scale_prefetch: bool  # the next K block's scales loaded one iteration ahead
    gemm1_k_blocks_per_step: int  # 128-wide K blocks whose tiles are requested together
    gemm1_tiles_fastest: bool  # consecutive programs take tiles of one column block (W1 shared in L2)
    # GEMM2: O = C[rows] @ W2[e]^T, times the routing weight
    gemm2_block_m: int
    gemm2_block_h: int  # output columns per item
    gemm2_warps: int
    gemm2_stages: int
    gemm2_scale_prefetch: bool
    gemm2_k_blocks_per_step: int
    gemm2_tiles_fastest: bool  # else consecutive programs take H blocks of one tile (C rows shared in L2)
    gemm2_w2_prefetch_lines: int  # 128-byte lines per W2 row asked of the L2 before waiting on GEMM1 (PDL)
    # C and the reduction of tokens with several local experts
    c_hi_lo: bool  # C as a hi/lo pair of FP8 terms (else hi alone, as up to v6)
    bf16_partial_rows: bool  # GEMM2 parks multi-expert rows in bf16 (else fp32) for the finalize
    atomic_reduction: bool  # fp32 atomics into one row per token (else one row per (token, slot), in order)
    finalize_block_t: int
    finalize_block_h: int
    pdl: bool  # programmatic dependent launch of GEMM1 (after a routing/sort launch), GEMM2 and finalize

    def __post_init__(self):
        if self.fused_routing and not self.inline_rows:
            raise ValueError("fused_routing needs inline_rows")
        if self.gemm2_w2_prefetch_lines and not self.pdl:
            raise ValueError("gemm2_w2_prefetch_lines needs pdl (it runs while GEMM2 waits for GEMM1)")
        if self.atomic_reduction and self.bf16_partial_rows:
            raise ValueError("bf16_partial_rows and atomic_reduction exclude each other")

    @property
    def gemm1_swapped(self) -> bool:
        """Weights on the MMA's M side, tokens on its N side: where the tokens cannot fill M = 64."""
        return self.gemm1_block_m < 64

    @property
    def gemm2_swapped(self) -> bool:
        return self.gemm2_block_m < 64


def tiles_for(T: int, cap: int) -> Tiles:
    """The table: tiles for T tokens on a GPU of compute capability `cap` (x 10: 90, 100)."""
    small = T <= INLINE_MAX_T
    sm90 = cap < 100
    if T <= 4:
        bm1, split_k, w1, bm2, bh, w2, st2, prefetch_lines = 16, 2, 4, 16, 64, 4, 4, 0
    elif T <= INLINE_MAX_T:
        bm1, split_k, w1, bm2, bh, w2, st2, prefetch_lines = 16, 1, 4, 16, 128, 4, 4, 4
    elif T <= 2048:
        bm1, split_k, w1, bm2, bh, w2, st2, prefetch_lines = 64, 1, 8, 64, 128, 8, 3, 0
    else:  # GEMM1 at BM 128 spills on sm_100 (its accumulators pass through registers there too)
        bm1, split_k, w1, bm2, bh, w2, st2, prefetch_lines = 128 if sm90 else 64, 1, 8, 128, 128, 8, 3, 0
    # mid T: 175 instead of 162 registers cost GEMM2 a CTA per SM
    spf2 = not (16 < T <= INLINE_MAX_T)
    if sm90 and 4 < T <= INLINE_MAX_T:  # hi/lo C: 4 stages of 20 KB would leave 2 CTAs per SM (v6: 3)
        st2 = 3
    if sm90 and T > 2048:  # hi/lo C: BM 128 x BH 128 with the scale prefetch spills 16 B (255 regs)
        spf2 = False
    large = T > 2048
    return Tiles(
        inline_rows=small,
        fused_routing=T <= 8,
        # large T (H200 kernel times): 16 tokens on 8 warps 79-94 us, 4 on 2 warps 36-43 (rung 4 v12-v13;
        # 54-65 in v36's runs), 1 on 1 warp 36-39 in the same runs (rung 4 v36, T = 11948 and 14107)
        routing_block_t=1 if small or large else 16,
        routing_warps=1 if small or large else 8,
        # large T: 4096 tokens a step on 16 warps, 16.9 / 22.7 us at T = 11948 / 14107 where 1024 on 4
        # took 25.7 / 32.3 (rung 4 v51: each chunk is latency-bound, fewer of them)
        sort_block_t=4096 if large else min(1024, max(16, next_pow2(T))),
        sort_warps=16 if large else 4,
        gemm1_block_m=bm1,
        gemm1_split_k=split_k,
        gemm1_warps=w1,
        gemm1_stages=3,
        gemm1_scale_prefetch=True,
        # two K blocks a step (1 CTA of 204 KB per SM): measured (v6, H100) -3.3% at T=56/80, -3% at
        # T=7; on sm_100 it spills 24-64 B (offline compile) and is unmeasured: one block there
        gemm1_k_blocks_per_step=2 if (sm90 and (4 < T <= 8 or 16 < T <= INLINE_MAX_T)) else 1,
        gemm1_tiles_fastest=T > 2048,
        gemm2_block_m=bm2,
        gemm2_block_h=bh,
        gemm2_warps=w2,
        gemm2_stages=st2,
        gemm2_scale_prefetch=spf2,
        gemm2_k_blocks_per_step=1,
        gemm2_tiles_fastest=False,
        gemm2_w2_prefetch_lines=prefetch_lines,
        c_hi_lo=True,  # rel-L2 error ~2e-3 instead of ~2.3e-2 (NOTES.md, v7)
        bf16_partial_rows=not small,  # measured: -7% at T=14107, -6% at T=11948 (v5), -6.4% at T=901 (v6)
        atomic_reduction=False,  # within 1% of the ordered sum, and not deterministic
        # large T (same runs): one token x 2048 columns a program, 63-93 us where 8 x 1024 took 144-196
        finalize_block_t=1 if small or large else 8,
        finalize_block_h=2048 if large else 1024,
        pdl=True,
    )
