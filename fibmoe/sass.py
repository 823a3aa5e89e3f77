"""Reading compiled kernels (cubins, SASS listings) for what costs no device time to know: shared by
scripts/compile_check.py and scripts/gemm_compile_report.py.

`cubin_report` runs Triton's bundled cuobjdump on a cubin: registers, stack (bytes spilled to local
memory) and the SASS listing. `count_ops` counts telling instructions in it. `hot_loop_spills` counts
the local-memory loads and stores (LDL/STL: spills) inside a kernel's innermost loops that issue
tensor-core MMAs: a spill there runs every K step, one in the item loop around it once per item. A loop
is a backward branch and the instructions from its target to it. Spills in a stretch of the loop that a
forward branch jumps over (an epilogue inside a flattened loop, run once every N steps) are counted
apart: in rung 4's GEMM2 loop at T = 16 (sm_90) all 9 of its spills sit there, in the H block's
epilogue. The split is a reading aid, not a proof: on sm_100 one elected thread issues the tcgen05 MMAs
inside a stretch the other threads branch over, and mbarrier waits retry through stubs placed after the
kernel, so there read the listing before trusting it (`stack=0` is the only sure "no spill").
"""

import re
import subprocess
import tempfile
from pathlib import Path

MMA_OPS = ("QGMMA", "HGMMA", "UTCQMMA", "UTCHMMA", "UTCMMA", "HMMA", "QMMA", "IMMA")  # sm_90, sm_100, older
_INSTR = re.compile(r"/\*([0-9a-f]{4,})\*/\s*([^;]*);")
_BRANCH = re.compile(r"\bBRA\b[^;]*?\b0x([0-9a-f]+)")
_SPILL = re.compile(r"\b(LDL|STL)\b")


def instructions(sass: str) -> list[tuple[int, str]]:
    """(address, instruction text) of every instruction in the listing, in order."""
    return [(int(m.group(1), 16), m.group(2).strip()) for m in _INSTR.finditer(sass)]


def mma_loops(sass: str) -> list[tuple[int, int]]:
    """(first, last address) of each innermost loop that issues an MMA: no other such loop inside it."""
    ins = instructions(sass)
    loops = set()
    for addr, text in ins:
        b = _BRANCH.search(text)
        if b and int(b.group(1), 16) < addr:
            loops.add((int(b.group(1), 16), addr))
    hot = [(s, e) for s, e in loops if any(s <= a <= e and any(op in t for op in MMA_OPS) for a, t in ins)]
    return sorted((s, e) for s, e in hot if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for s2, e2 in hot))


def _skipped(ins, start: int, end: int) -> list[tuple[int, int]]:
    """(first, last address) of each stretch of loop start..end that a forward branch inside the loop
    jumps over: code not every iteration runs (an epilogue once every N steps, say)."""
    out = []
    for addr, text in ins:
        b = _BRANCH.search(text)
        if b and start <= addr <= end and addr < int(b.group(1), 16) <= end:  # a break (to past the end) is not one
            out.append((addr + 1, int(b.group(1), 16) - 1))
    return out


def hot_loop_spills(sass: str) -> dict[str, int]:
    """LDL/STL instructions inside the innermost MMA loops (`mma_loops`), in one pass over the listing:
    `loop_spills`, those on the path every iteration runs (paid every K step), and `branch_spills`, those
    in a stretch the loop jumps over with a forward branch (paid only when the branch is not taken: the
    tail of an H block, say, so they cost little)."""
    ins = instructions(sass)
    out = dict(loop_spills=0, branch_spills=0)
    for s, e in mma_loops(sass):
        skipped = _skipped(ins, s, e)
        for a, t in ins:
            if s <= a <= e and _SPILL.search(t):
                out["branch_spills" if any(f <= a <= g for f, g in skipped) else "loop_spills"] += 1
    return out


def nvidia_bin() -> Path:
    """The folder of Triton's bundled NVIDIA tools (ptxas, cuobjdump: no CUDA toolkit needed)."""
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def cubin_report(cubin: bytes) -> dict:
    """{regs, stack, sass} of a cubin: registers per thread, stack bytes (None if cuobjdump does not say)
    and the SASS listing."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "k.cubin"
        path.write_bytes(cubin)
        cuobjdump = nvidia_bin() / "cuobjdump"
        usage, listing = (
            subprocess.run([cuobjdump, flag, path], capture_output=True, text=True).stdout
            for flag in ("--dump-resource-usage", "--dump-sass")
        )
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    return dict(regs=int(regs.group(1)) if regs else None, stack=int(stack.group(1)) if stack else None, sass=listing)


def count_ops(sass: str, ops) -> dict[str, int]:
    """How often each opcode prefix of `ops` starts a word in the listing (those that occur)."""
    return {op: n for op in ops if (n := len(re.findall(r"\b" + re.escape(op), sass)))}
