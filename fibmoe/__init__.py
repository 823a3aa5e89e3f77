"""fibmoe: write, prove and ship FP8 block-scale MoE kernels (FlashInfer MLSys 2026, Track A)."""

__version__ = "0.1.0"
