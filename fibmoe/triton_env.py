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
    let_interpreter_loops_take_runtime_bounds()


def let_interpreter_loops_take_runtime_bounds() -> None:
    """Triton 3.6's interpreter keeps every scalar as a 1-element numpy array and turns a loop bound into
    an int with int(array), which numpy 2.4 refuses for arrays of one dimension: `for i in range(0, n)`
    with a runtime n fails there (it compiles and runs on a GPU). Convert through the array's one element
    instead. Only the interpreter's own patch of the language's tensor class changes."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "fibmoe_runtime_bounds", False):
        return

    def patch(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch.fibmoe_runtime_bounds = True
    interpreter._patch_lang_tensor = patch


def silence_interpreter_exp_overflow() -> None:
    """The interpreter evaluates tl.exp with numpy, which warns when exp overflows to inf: the sigmoid of
    the routing and the silu of SwiGLU take exp(-x) of large x, and x / (1 + inf) is the right limit (0).
    Only that warning from the interpreter's own module is silenced; every other one still shows."""
    warnings.filterwarnings(
        "ignore", message="overflow encountered in exp", category=RuntimeWarning, module=r"triton\.runtime\.interpreter"
    )
