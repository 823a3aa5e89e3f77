"""Where Triton kernels run: on the GPU, or without one in Triton's CPU interpreter.

The interpreter is chosen by TRITON_INTERPRET=1, read when a kernel is decorated (at import), so it
must be set before any kernel module is imported; the CLI and the test suite both call this first.
"""

from __future__ import annotations

import os
import warnings

import torch


def use_interpreter_without_gpu() -> None:
    """Without a GPU, run Triton kernels in the interpreter; with one, leave the choice to the user."""
    if torch.cuda.is_available():
        return
    os.environ.setdefault("TRITON_INTERPRET", "1")
    silence_interpreter_exp_overflow()


def silence_interpreter_exp_overflow() -> None:
    """The interpreter evaluates tl.exp with numpy, which warns when exp overflows to inf: the sigmoid of
    the routing and the silu of SwiGLU take exp(-x) of large x, and x / (1 + inf) is the right limit (0).
    Only that warning from the interpreter's own module is silenced; every other one still shows."""
    warnings.filterwarnings(
        "ignore", message="overflow encountered in exp", category=RuntimeWarning, module=r"triton\.runtime\.interpreter"
    )
