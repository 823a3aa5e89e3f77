"""fibmoe: write, prove and ship FP8 block-scale MoE kernels (FlashInfer MLSys 2026, Track A)."""

from pathlib import Path

__version__ = "0.1.0"

# The checkout this package sits in: variants/, workloads/ and results/ live beside it.
REPO_ROOT = Path(__file__).resolve().parent.parent
