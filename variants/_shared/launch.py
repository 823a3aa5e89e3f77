"""Launching Triton kernels with little host time: shared by the Triton rungs.

A contest call is timed from an idle GPU, so at small T the host time of a launch counts in full.
`Kernel` launches one kernel of a workspace whose grid and constexprs are fixed: the first call goes
through Triton's JIT dispatcher (compiles, binds arguments, and sizes a persistent grid from the
compiled kernel's registers and shared memory); later calls go straight to the compiled kernel's C
launcher with plain integer pointers (no argument binding, no driver pointer queries).

That fast path calls launcher internals whose signature belongs to one Triton release: it is used only
on `RAW_LAUNCH_TRITON` (the contest's Triton, 3.6.x). On any other Triton `Kernel.fast_ready` stays
False and callers keep using the dispatcher (`Kernel.slow`), which is always correct.

Also here: the PDL (programmatic dependent launch) and L2 prefetch device helpers, and the device
facts a grid is sized from.
"""

import torch
import triton
import triton.language as tl

from .exact import INTERPRET

try:  # programmatic dependent launch (sm_90+); kernels call it only when launched with PDL
    from triton.language.extra.cuda import gdc_launch_dependents as _gdc_launch_dependents
    from triton.language.extra.cuda import gdc_wait as _gdc_wait
except Exception:  # pragma: no cover
    _gdc_launch_dependents = _gdc_wait = None

BLOCK = 128  # the quantization block of activations and weights
FP8_MAX = tl.constexpr(448.0)  # the largest finite e4m3 value

RAW_LAUNCH_TRITON = "3.6."  # the Triton release whose C launcher signature `Kernel.fast` calls
RAW_LAUNCH = triton.__version__.startswith(RAW_LAUNCH_TRITON)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def meta_call_arguments(T: int, E: int, NL: int, H: int, I: int) -> tuple:
    """The 11 arguments of a call of T tokens (the definition's inputs in order, then `output`) as tensors
    on the "meta" device: nothing is allocated. What a rung's `compile_plan` builds its kernels from."""
    meta = torch.device("meta")
    fp8 = torch.float8_e4m3fn
    return (
        torch.empty(T, E, device=meta),
        torch.empty(E, dtype=torch.bfloat16, device=meta),
        torch.empty(T, H, dtype=fp8, device=meta),
        torch.empty(H // BLOCK, T, device=meta),
        torch.empty(NL, 2 * I, H, dtype=fp8, device=meta),
        torch.empty(NL, 2 * I // BLOCK, H // BLOCK, device=meta),
        torch.empty(NL, H, I, dtype=fp8, device=meta),
        torch.empty(NL, H // BLOCK, I // BLOCK, device=meta),
        0,
        2.5,
        torch.empty(T, H, dtype=torch.bfloat16, device=meta),
    )


def compile_entry(kernel, args) -> tuple:
    """(name, jit function, arguments, constexprs, launch options) of one launch of `kernel` (a `Kernel`)
    with `args`, as scripts/compile_check.py compiles it: for a GPU, so libdevice's math where the kernel
    chooses between it and the interpreter's."""
    consts = dict(kernel.consts, **({"USE_LIBDEVICE": True} if "USE_LIBDEVICE" in kernel.consts else {}))
    return kernel.fn.__name__.removesuffix("_kernel"), kernel.fn, args, consts, kernel.opts


def sm_count(device) -> int:
    if INTERPRET or device.type != "cuda":
        return 2  # the interpreter runs programs one by one: two persistent programs exercise the loop
    return torch.cuda.get_device_properties(device).multi_processor_count


def capability(device) -> int:
    """Compute capability x 10 (90: H100/H200, 100: B200); 90 where there is no GPU."""
    if INTERPRET or device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


@triton.jit
def gdc_wait(PDL: tl.constexpr):
    """Programmatic dependent launch: wait until the previous kernel of the stream has completed and
    its writes are visible (a no-op when the kernel was launched without PDL)."""
    if PDL:
        _gdc_wait()


@triton.jit
def gdc_launch_dependents(PDL: tl.constexpr):
    """Let the next kernel of the stream (launched with PDL) start its CTAs in the SM slots that this
    kernel's finished CTAs free; that kernel still waits for this one to complete before it reads."""
    if PDL:
        _gdc_launch_dependents()


@triton.jit
def prefetch_l2_bulk(ptrs, nbytes):
    """Ask the L2 to fetch `nbytes` (a multiple of 16) from each 16-byte aligned address in `ptrs`: one bulk
    request per element (sm_90+: the copy engine streams it, no thread waits or holds a register)."""
    tl.inline_asm_elementwise("cp.async.bulk.prefetch.L2.global [$1], $2; // $0", "=r,l,r", [ptrs, nbytes],
                              dtype=tl.int32, is_pure=False, pack=1)  # fmt: skip


@triton.jit
def prefetch_l2(ptrs):
    """Ask the L2 to fetch the 128-byte lines at `ptrs` (no register result, no wait)."""
    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; // $0", "=r,l", [ptrs], dtype=tl.int32, is_pure=False, pack=1)


class Kernel:
    """One launch of a workspace: `fn` on `grid` with the constexprs `consts` (the trailing arguments
    of `fn`) and launch options `opts` (num_warps, num_stages, launch_pdl). `persistent_sms` > 0: a
    persistent grid over that many SMs, `grid[0]` programs at most (one per work item). The runtime
    integers of `fn` must be `do_not_specialize` and its pointers 16-byte aligned on every fast call
    (the caller checks), since the compiled kernel is reused as compiled on the first call."""

    __slots__ = ("fn", "grid", "consts", "opts", "tail", "ck", "persistent_sms", "max_programs", "head", "call")

    def __init__(self, fn, grid, consts, persistent_sms=0, **opts):
        self.fn = fn
        self.grid = tuple(grid) + (1,) * (3 - len(grid))
        self.consts = consts
        self.opts = opts
        names = fn.arg_names[len(fn.arg_names) - len(consts) :]
        assert sorted(names) == sorted(consts), (fn.__name__, names, sorted(consts))
        self.tail = tuple(consts[n] for n in names)
        self.ck = None
        self.call = None
        self.head = None
        self.persistent_sms = persistent_sms
        self.max_programs = self.grid[0]  # never more programs than work items
        if persistent_sms:  # a first call uses one program per SM (the kernel's loop bound covers it)
            self.grid = (min(self.max_programs, persistent_sms), 1, 1)

    @property
    def fast_ready(self) -> bool:
        """Compiled, and `fast` may be called."""
        return self.ck is not None

    def slow(self, *args):
        """Launch through Triton's dispatcher (tensors as arguments); the first call also prepares `fast`."""
        ck = self.fn[self.grid](*args, **self.consts, **self.opts)
        if self.ck is None and RAW_LAUNCH and not INTERPRET and hasattr(ck, "packed_metadata"):
            ck._init_handles()
            if self.persistent_sms:
                n_threads = 32 * ck.metadata.num_warps
                by_regs = 65536 // max(1, ck.n_regs * n_threads)
                props = torch.cuda.get_device_properties(torch.cuda.current_device())
                smem = getattr(props, "shared_memory_per_multiprocessor", 233472) - 1024
                by_smem = smem // max(1, ck.metadata.shared + 1024) if ck.metadata.shared else 32
                occ = max(1, min(by_regs, by_smem, 2048 // n_threads, 8))
                grid = (min(self.max_programs, self.persistent_sms * occ), 1, 1)
                if grid != self.grid:  # run this first call again on the grid of every later call: a
                    # kernel's result may depend on its grid (rung 4's stream-K: one share per program),
                    # and a call must give the same bits as the next (v28: 132 then 264 programs did not)
                    self.grid = grid
                    ck = self.fn[self.grid](*args, **self.consts, **self.opts)
            g = self.grid
            launcher = ck.run
            raw = getattr(launcher, "launch", None)
            if (
                raw is not None
                and not getattr(launcher, "global_scratch_size", 1)
                and not getattr(launcher, "profile_scratch_size", 1)
                and getattr(launcher, "num_ctas", 1) == 1
            ):
                # the C entry point itself: (grid, stream, function, cooperative, pdl, global scratch,
                # profile scratch, metadata, launch metadata, enter hook, exit hook, *kernel args)
                self.head = (g[0], g[1], g[2])
                self.call = (
                    raw,
                    ck.function,
                    launcher.launch_cooperative_grid,
                    launcher.launch_pdl,
                    ck.packed_metadata,
                )
            self.ck = ck

    def fast(self, stream, *args):
        """Launch the compiled kernel with integer pointers (after `slow`, when `fast_ready`)."""
        c = self.call
        if c is not None:
            g = self.head
            c[0](g[0], g[1], g[2], stream, c[1], c[2], c[3], None, None, c[4], None, None, None, *args, *self.tail)
        else:  # Triton 3.6's CompiledKernel.run, for kernels that need scratch memory or clusters
            ck = self.ck
            g = self.grid
            ck.run(g[0], g[1], g[2], stream, ck.function, ck.packed_metadata, None, None, None, *args, *self.tail)
