"""Rung 4 (variants/r4_fused): the whole layer as one persistent launch, on the small definition.

Without a GPU the kernel runs in Triton's CPU interpreter, which runs a grid's programs one after the
other: the program that claims the first work item claims them all in order, so every in-kernel wait
(routing done, a tile's C complete, an H block's rows parked) is already satisfied when it is reached.
What the CPU can check, and does here: the numbers (the same bounds as rung 3, whose math this is:
tests/test_rung3.py's docstring), the work-item accounting across the scheduler's paths (routing in
every program or as items, inline or sorted rows, swapped or not, split-K, H-block groups), exactly one
launch per call, exact zeros, ties, offsets 0 and the last rank, determinism, and that the last program
out leaves every counter at zero for the next call. The concurrent hand-off itself runs on the GPU
(`fibmoe check r4-fused-persistent --definition contest`, results/h200/).
"""

import dataclasses
import sys
import types

import pytest
import torch
import triton
import triton.language as tl
from test_rung3 import DEVICE, _call, _check_output, _tie_tokens  # noqa: E402  (same bounds as rung 3)

from fibmoe import dataset, inputs, reference, variants
from fibmoe.geometry import SMALL

pytestmark = pytest.mark.slow  # Triton's CPU interpreter

VARIANT = "r4-fused-persistent"


@pytest.fixture(scope="module")
def ds():
    return dataset.load(SMALL.name)


@pytest.fixture(scope="module")
def built(ds):
    fn = variants.build(variants.pack(variants.resolve([VARIANT])[0], ds.definition.name), ds.definition)
    mod = variants.module_of(fn)
    pkg = mod.__package__
    return fn, mod, sys.modules[pkg + ".tiles"], sys.modules[pkg + ".persistent"]


def _workload(ds, T):
    (w,) = [w for w in ds.workloads if w.workload.axes["seq_len"] == T]
    return w


def _run_with(mod, tiles, inp):
    out = torch.full((inp[2].shape[0], inp[2].shape[1]), float("nan"), dtype=torch.bfloat16, device=inp[2].device)
    assert mod.Runner(tiles)(*inp, out) is out
    return out


# every small workload once, each style on workloads with offset 0 and offset 48 (the last rank)
SPLIT = {"contest": (1, 16, 40), "quantized": (3, 7, 64)}


@pytest.mark.parametrize("style", inputs.STYLES)
def test_workloads_match_the_reference(ds, built, style):
    fn, mod, _, _ = built
    chosen = [_workload(ds, T) for T in SPLIT[style]]
    assert {w.workload.inputs["local_expert_offset"].value for w in chosen} >= {0, 48}
    torch.manual_seed(41)
    n_empty = 0
    for w in chosen:
        inp = inputs.generate(ds, w, DEVICE, style)
        n_empty += int(_check_output(_call(fn, inp), inp).sum())
        experts, weights = mod.route(inp[0], inp[1], inp[9])
        ref_e, ref_w = reference.route(inp[0], inp[1], inp[9])
        assert torch.equal(experts.cpu(), ref_e.cpu())
        torch.testing.assert_close(weights.cpu(), ref_w.cpu(), rtol=1e-6, atol=0)
    assert n_empty > 0  # tokens with no local expert got exact zero rows


def test_one_launch_per_call(ds, built, monkeypatch):
    """Routing, grouping, both GEMMs, the reduction and the zero rows: one Triton launch per call."""
    fn, _, _, persistent = built
    launches = []
    kind = type(persistent.moe_kernel)  # JITFunction, or the interpreter's InterpretedFunction
    real = kind.run

    def counting(self, *args, **kwargs):
        launches.append(self.fn.__name__)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(kind, "run", counting)
    for T in (1, 16, 64):
        torch.manual_seed(T)
        inp = inputs.generate(ds, _workload(ds, T), DEVICE, "contest")
        launches.clear()
        _check_output(_call(fn, inp), inp)
        assert launches == ["moe_kernel"], (T, launches)


@pytest.mark.parametrize(
    "T, changes",
    [
        (16, dict(route_in_every_program=True, split_k=2)),  # tiny-T routing, split-K tickets
        (40, dict(route_in_every_program=False, tokens_per_route_item=16)),  # routing items, a ragged last one
        (16, dict(sorted_rows=True, swapped=False, rows_per_tile=64, num_warps=8, num_stages=3)),  # T > 128's shape
        (16, dict(sorted_rows=True, swapped=True, split_k=2, tokens_per_finalize_block=4)),  # sort, split-K
        (16, dict(h_blocks_per_item=1, gemm2_step_pairs=True, tokens_per_finalize_block=2)),  # pairs across H blocks
        (3, dict(route_in_every_program=True, stream_k=True)),  # stream-K shares, tiny T
        (40, dict(stream_k=True, sorted_rows=True)),  # stream-K over sorted rows, many tiles
        (16, dict(h_blocks_per_item=2, gemm2_step_pairs=False, num_stages=3)),  # GEMM2 one step a stage
        (3, dict(stream_k=True, gemm2_step_pairs=False, num_stages=2, max_registers=168)),  # 3 CTAs an SM
        (3, dict(route_in_every_program=True, stream_k=True, h_block=64)),  # half a W2 scale block an H block
        (16, dict(h_block=64, h_blocks_per_item=2, swapped=False)),  # unswapped: 64 columns on the MMA's N
        (40, dict(sorted_rows=True, swapped=True, rows_per_tile=32, tokens_per_finalize_block=32)),  # 32-row tiles
        (40, dict(sorted_rows=True, swapped=False, rows_per_tile=64, num_warps=8, gemm2_swapped=True,
                  gemm2_step_pairs=False)),  # GEMM2 swapped under an unswapped GEMM1 (T > 128's tiles)
    ],
    ids=["route-all-split-k", "route-items", "sorted-unswapped", "sorted-split-k", "h-block-pairs", "stream-k",
         "stream-k-sorted", "gemm2-single-steps", "register-cap", "h-block-64", "h-block-64-unswapped",
         "swapped-32-sorted", "gemm2-swapped-alone"],  # fmt: skip
)
def test_scheduler_paths_match_the_reference(ds, built, T, changes):
    _, mod, tiles_mod, _ = built
    torch.manual_seed(3)
    inp = inputs.generate(ds, _workload(ds, T), DEVICE, "quantized")
    tiles = dataclasses.replace(tiles_mod.tiles_for(T), **changes)
    _check_output(_run_with(mod, tiles, inp), inp)


WIDE_H, WIDE_I = 512, 256  # a made-up geometry wider than the small definition: 4 H blocks, 2 column blocks


def _wide_inputs(T, seed):
    """Inputs of T tokens for E = 64 experts, 16 of them local (offset 0), H = WIDE_H, I = WIDE_I."""
    E, NL, H, I = 64, 16, WIDE_H, WIDE_I  # noqa: E741 (the operator's own names)
    torch.manual_seed(seed)
    hs, hs_scale = inputs.quantize_activations(torch.randn(T, H))
    w1, w1_scale = inputs.quantize_weights(torch.randn(NL, 2 * I, H) / H**0.5)
    w2, w2_scale = inputs.quantize_weights(torch.randn(NL, H, I) / I**0.5)
    inp = [torch.randn(T, E), torch.randn(E) * 0.1, hs, hs_scale, w1, w1_scale, w2, w2_scale, 0, 2.5]
    return [x.to(DEVICE) if isinstance(x, torch.Tensor) else x for x in inp]


def test_a_short_tail_of_single_h_block_items(built, monkeypatch):
    """`tail_waves`: GEMM2's last tiles in items of one H block while the others take four. The small
    definition has one K block (an odd step count), so this runs a wider made-up geometry: H = 512 (four
    H blocks), I = 256, on three programs (two waves of small items = the last two tiles)."""
    _, mod, tiles_mod, persistent = built
    monkeypatch.setattr(persistent, "sm_count", lambda device: 3)
    T, H = 16, WIDE_H
    inp = _wide_inputs(T, seed=5)
    tiles = dataclasses.replace(tiles_mod.tiles_for(T), h_blocks_per_item=4, tail_waves=2)
    runner = mod.Runner(tiles)
    out = torch.full((T, H), float("nan"), dtype=torch.bfloat16, device=DEVICE)
    runner(*inp, out)
    (ws,) = runner.workspaces.values()
    assert ws.kernel.consts["HBG"] == 4 and ws.kernel.consts["TAIL_WAVES"] == 2
    _check_output(out, inp)


@pytest.mark.parametrize("programs", [3, 5])
def test_the_finalize_over_listed_tokens(built, monkeypatch, programs):
    """Sorted rows (T > 128's path): one more sort item lists the tokens with several local experts, in
    token order, and the finalize's items cover only those (`finalize_listed`), after a tail of
    single-H-block GEMM2 items. The list is checked against the routing, and the output against the
    reference and, bit for bit, against the finalize over all T tokens."""
    _, mod, tiles_mod, persistent = built
    monkeypatch.setattr(persistent, "sm_count", lambda device: programs)
    T, H, NL = 40, WIDE_H, 16
    inp = _wide_inputs(T, seed=13)
    base = dataclasses.replace(tiles_mod.tiles_for(T), sorted_rows=True, h_blocks_per_item=4, tail_waves=2,
                               tokens_per_finalize_block=4)  # fmt: skip
    outs = []
    for listed in (True, False):
        runner = mod.Runner(dataclasses.replace(base, finalize_listed=listed))
        out = torch.full((T, H), float("nan"), dtype=torch.bfloat16, device=DEVICE)
        runner(*inp, out)
        (ws,) = runner.workspaces.values()
        assert ws.kernel.consts["LISTED_FIN"] == listed and ws.kernel.consts["TAIL_WAVES"] == 2
        if listed:
            local = ((ws.ids >= 0) & (ws.ids < NL)).sum(1)
            many = torch.nonzero(local > 1).flatten().to(torch.int32)
            assert 4 < len(many) < T  # some tokens need the finalize, not all
            assert int(ws.counts[NL]) == len(many)
            assert torch.equal(ws.lists[NL * T : NL * T + len(many)].cpu(), many.cpu())
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    _check_output(outs[0], inp)


@pytest.mark.parametrize("programs", [3, 5])
def test_stream_k_shares_that_cross_column_blocks(built, monkeypatch, programs):
    """`stream_k`: GEMM1's K blocks in one equal share per program. The small definition has 2 K blocks
    per column block, so this runs a wider made-up geometry (H = 512: 4 K blocks, I = 256: 2 column
    blocks) on 3 and 5 programs: shares start and end inside column blocks, a column block hears from
    two or three shares, whose partials the last to arrive sums in share order. Against the reference,
    bit-identical on a second call, every ticket back at zero."""
    _, mod, tiles_mod, persistent = built
    monkeypatch.setattr(persistent, "sm_count", lambda device: programs)
    T, H = 3, WIDE_H
    inp = _wide_inputs(T, seed=6)
    runner = mod.Runner(dataclasses.replace(tiles_mod.tiles_for(T), stream_k=True))
    outs = []
    for _ in range(2):
        out = torch.full((T, H), float("nan"), dtype=torch.bfloat16, device=DEVICE)
        runner(*inp, out)
        (ws,) = runner.workspaces.values()
        assert ws.kernel.consts["STREAM_K"] and ws.kernel.grid[0] == programs
        assert int(ws.sync.abs().sum()) == 0 and int(ws.ticket.abs().sum()) == 0
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    _check_output(outs[0], inp)


def _local_tiles(inp, rows_per_tile, n_local):
    """M tiles of the local experts a call hits: each expert's routed rows in tiles of rows_per_tile."""
    experts, _ = reference.route(inp[0], inp[1], inp[9])
    rows = torch.bincount((experts - inp[8]).flatten().clamp(-1, n_local) + 1, minlength=n_local + 2)[1:-1]
    return int(((rows + rows_per_tile - 1) // rows_per_tile).sum())


@pytest.mark.parametrize("programs, doubled", [(128, True), (1, False)])
def test_split_k_fill_doubles_the_splits_only_where_the_last_wave_fills_better(built, monkeypatch, programs,
                                                                               doubled):  # fmt: skip
    """`split_k_fill`: the kernel takes split-K 4 instead of 2 when 2x the GEMM1 items need fewer than 2x
    the waves of programs (128 programs: at most 16 tiles x 2 column blocks x 4 splits, one wave either
    way, so 4), and keeps 2 when they fill the same (one program). Wide geometry (4 K blocks: split-K 4 divides them).
    Every split parks its partials in slot (tile, column block) x splits + split, so the slots written
    (the buffer poisoned first) count the splits the GPU chose. Against the reference, bit-identical on
    a second call, every ticket back at zero."""
    _, mod, tiles_mod, persistent = built
    monkeypatch.setattr(persistent, "sm_count", lambda device: programs)
    T, H = 16, WIDE_H
    inp = _wide_inputs(T, seed=8)
    tiles = dataclasses.replace(tiles_mod.tiles_for(T, interpret=True), split_k=2, split_k_fill=True)
    assert tiles.split_k_fill and not tiles.stream_k
    runner = mod.Runner(tiles)
    outs = []
    for _ in range(2):
        out = torch.full((T, H), float("nan"), dtype=torch.bfloat16, device=DEVICE)
        if runner.workspaces:
            (ws,) = runner.workspaces.values()
            ws.part.fill_(float("nan"))
        runner(*inp, out)
        (ws,) = runner.workspaces.values()
        assert ws.kernel.consts["SPLIT_FILL"] and ws.kernel.consts["SPLIT_K"] == 2
        assert int(ws.sync.abs().sum()) == 0 and int(ws.ticket.abs().sum()) == 0
        outs.append(out)
    slot = 2 * 128 * tiles.rows_per_tile
    written = int((~ws.part.view(-1, slot).isnan().all(1)).sum())
    n_tiles = _local_tiles(inp, tiles.rows_per_tile, n_local=16)
    assert n_tiles > 0
    assert written == n_tiles * (WIDE_I // 128) * (4 if doubled else 2), (written, n_tiles)
    assert torch.equal(outs[0], outs[1])
    _check_output(outs[0], inp)


def test_counters_reset_and_calls_repeat_bit_for_bit(ds, built, monkeypatch):
    """Two calls, identical bits; after each, the last program out has zeroed every counter (claims,
    routing/sort done, H-block and tile completion), so the next call, or a CUDA graph replay, starts
    clean. With more programs than items some programs claim nothing and still count out."""
    _, mod, tiles_mod, persistent = built
    monkeypatch.setattr(persistent, "sm_count", lambda device: 7)
    w = _workload(ds, 7)
    torch.manual_seed(9)
    inp = inputs.generate(ds, w, DEVICE, "contest")
    runner = mod.Runner(tiles_mod.tiles_for(7))
    outs = []
    for _ in range(2):
        out = torch.full((7, inp[2].shape[1]), float("nan"), dtype=torch.bfloat16)
        runner(*inp, out)
        (ws,) = runner.workspaces.values()
        assert ws.kernel.grid[0] == 7
        assert int(ws.sync.abs().sum()) == 0 and int(ws.ticket.abs().sum()) == 0
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    _check_output(outs[0], inp)


def test_tied_routing_through_the_whole_call_at_the_last_rank(ds, built):
    """Crafted exact ties at the group and expert boundaries, at offset 48: the reference's choices and
    exact zeros for the tokens with no local expert."""
    fn, mod, _, _ = built
    logits, bias = _tie_tokens()
    torch.manual_seed(7)
    inp = inputs.generate(ds, _workload(ds, 7), DEVICE, "quantized")
    inp[2], inp[3] = inp[2][: len(logits)], inp[3][:, : len(logits)].contiguous()
    inp[0], inp[1], inp[8] = logits.to(DEVICE), bias.to(DEVICE), 48
    none_local = _check_output(_call(fn, inp), inp)
    assert none_local.tolist() == [True, False, False, True, True, False]
    experts, _ = mod.route(inp[0], inp[1], inp[9])
    assert torch.equal(experts.cpu(), reference.route(logits, bias, inp[9])[0])


@pytest.mark.parametrize(
    "T, changes",
    [(3, {}), (7, {}), (16, dict(sorted_rows=True, swapped=True, split_k=2)), (40, dict(stream_k=True))],
    ids=["stream-k-route-all", "routing-items", "sorted-split-k", "stream-k-many"],
)
def test_no_local_expert_hit_gives_exact_zeros(ds, built, monkeypatch, T, changes):
    """No token picks a local expert (their routing bias pushed far down): no tile, no GEMM item, and
    every output row an exact zero from one launch, the counters left at zero for the next call."""
    _, mod, tiles_mod, persistent = built
    torch.manual_seed(11)
    inp = inputs.generate(ds, _workload(ds, T), DEVICE, "quantized")
    off, nl = int(inp[8]), inp[4].shape[0]
    inp[1] = inp[1].clone()
    inp[1][off:off + nl] = -1e4
    experts, _ = reference.route(inp[0], inp[1], inp[9])
    assert not ((experts >= off) & (experts < off + nl)).any()
    launches = []
    real_slow = persistent.Kernel.slow
    monkeypatch.setattr(persistent.Kernel, "slow", lambda self, *a: launches.append(1) or real_slow(self, *a))
    runner = mod.Runner(dataclasses.replace(tiles_mod.tiles_for(T), **changes))
    out = torch.full((T, inp[2].shape[1]), float("nan"), dtype=torch.bfloat16, device=inp[2].device)
    assert runner(*inp, out) is out
    assert len(launches) == 1
    assert not out.isnan().any() and not out.float().abs().sum().item()
    (ws,) = runner.workspaces.values()
    assert int(ws.sync.abs().sum()) == 0 and int(ws.ticket.abs().sum()) == 0


def test_tile_table_and_geometry_checks(built):
    _, _, tiles_mod, persistent = built
    assert tiles_mod.tiles_for(1).route_in_every_program and not tiles_mod.tiles_for(7).route_in_every_program
    assert not tiles_mod.tiles_for(901).route_in_every_program
    assert tiles_mod.tiles_for(901).sorted_rows and not tiles_mod.tiles_for(128).sorted_rows
    with pytest.raises(ValueError, match="above the fused path"):
        tiles_mod.tiles_for(tiles_mod.MAX_FUSED_T + 1)
    with pytest.raises(ValueError, match="powers of two"):
        persistent.Workspace(torch.device("meta"), 4, 256, 32, 7168, 2048,
                             dataclasses.replace(tiles_mod.tiles_for(4), tokens_per_route_item=3))  # fmt: skip
    with pytest.raises(ValueError, match="H block must be 64 or 128"):  # one W2 scale per H block and K block
        persistent.Workspace(torch.device("meta"), 4, 256, 32, 7168, 2048,
                             dataclasses.replace(tiles_mod.tiles_for(4), h_block=256))  # fmt: skip
    with pytest.raises(ValueError, match="unsupported geometry"):
        persistent.Workspace(torch.device("meta"), 4, 256, 32, 7168 + 64, 2048)
    capped = dataclasses.replace(tiles_mod.tiles_for(4), max_registers=168)  # the launch option, only when set
    assert persistent.Workspace(torch.device("meta"), 4, 256, 32, 7168, 2048, capped).kernel.opts["maxnreg"] == 168
    swapped2 = dataclasses.replace(tiles_mod.tiles_for(901), gemm2_swapped=True)  # GEMM2 alone swapped
    consts = persistent.Workspace(torch.device("meta"), 901, 256, 32, 7168, 2048, swapped2).kernel.consts
    assert consts["SWAP2"] and not consts["SWAP"]
    # GEMM2's own pipeline depth: 4 at 8 < T <= 128 on sm_90, else the kernel's num_stages (sm_100's 5)
    for T, cap, depth in ((7, 90, 3), (56, 90, 4), (56, 100, 5), (901, 90, 3)):
        ws = persistent.Workspace(torch.device("meta"), T, 256, 32, 7168, 2048, None, cap)
        assert ws.kernel.consts["G2_STAGES"] == depth, (T, cap)
    assert "maxnreg" not in persistent.Workspace(torch.device("meta"), 4, 256, 32, 7168, 2048).kernel.opts


class _FakeJit:
    """A jit function's launch surface for `Kernel.slow`: records the grid of every launch."""

    __name__ = "fake_kernel"
    arg_names = ["x", "C"]

    def __init__(self, shared):
        self.grids, self.shared = [], shared

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.grids.append(grid)
            return types.SimpleNamespace(
                packed_metadata=None, n_regs=128, function=None, _init_handles=lambda: None,
                metadata=types.SimpleNamespace(num_warps=4, shared=self.shared), run=types.SimpleNamespace(),
            )  # fmt: skip

        return launch


@pytest.mark.parametrize("shared_kb, grids", [(90, [3, 6]), (150, [3])])
def test_the_first_call_runs_on_the_grid_of_every_later_call(built, monkeypatch, shared_kb, grids):
    """A persistent kernel's grid is sized from the compiled kernel (registers, shared memory) after its
    first launch; a result may depend on the grid (stream-K: a share per program), so when the sizing
    changes it the first call is launched again on the new grid, and only then (v28: at 2 CTAs per SM the
    first call's bits differed from the second's)."""
    _, mod, _, _ = built
    launch = sys.modules[mod.__package__ + ".launch"]
    monkeypatch.setattr(launch, "INTERPRET", False)
    monkeypatch.setattr(launch, "RAW_LAUNCH", True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d: types.SimpleNamespace(shared_memory_per_multiprocessor=233472))  # fmt: skip
    fn = _FakeJit(shared_kb * 1024)  # 128 registers x 4 warps: 4 CTAs per SM by registers; shared memory: 2 or 1
    kernel = launch.Kernel(fn, (1000,), {"C": 1}, persistent_sms=3, num_warps=4)
    kernel.slow(0)
    assert [g[0] for g in fn.grids] == grids and kernel.grid[0] == grids[-1] and kernel.fast_ready
    kernel.slow(0)  # a later call through the dispatcher: one launch, on that grid
    assert [g[0] for g in fn.grids] == grids + grids[-1:]


w1_tile = None  # the shared `w1_tile` as packed with rung 4 (set by the fixture below; the kernel reads a global)


@triton.jit
def _w1_tile_kernel(hs_ptr, hss_ptr, w1_ptr, w1s_ptr, up_ptr, gate_ptr, T, H: tl.constexpr, I: tl.constexpr,  # noqa: E741
                    BM: tl.constexpr, STACK: tl.constexpr):  # fmt: skip
    """Expert 1's up and gate tiles of column block 1 over all K blocks, swapped ([128, BM])."""
    rows = tl.arange(0, BM)
    rmask = rows < T
    tok = tl.where(rmask, rows, 0)
    one = tl.program_id(0) + 1  # a grid of one: expert 1, column block 1
    up, gate = w1_tile(one, one, tok, rmask, 0, hs_ptr, hss_ptr, w1_ptr, w1s_ptr, T, H, I, BM, H // 128, True, True, 1,
                       STACK)  # fmt: skip
    el = tl.arange(0, 128)[:, None] * BM + rows[None, :]
    tl.store(up_ptr + el, up)
    tl.store(gate_ptr + el, gate)


@pytest.fixture(scope="module")
def w1_tile_kernel(built):
    global w1_tile
    w1_tile = sys.modules[built[1].__package__ + ".gemm1_tile"].w1_tile
    return _w1_tile_kernel


def test_gemm1_up_and_gate_stacked_in_one_dot_give_the_same_bits(w1_tile_kernel):
    """Rung 4's swapped GEMM1 stacks W1's up and gate rows into one [256, BK] tile and one dot a K block
    (rung 3 keeps two dots): the same products summed in the same order, so the same bits; both against
    the dequantized matmul."""
    T, BM, H, I = 5, 16, 512, 256  # noqa: E741 (the operator's own names)
    torch.manual_seed(7)
    hs, hss = inputs.quantize_activations(torch.randn(T, H))
    w1, w1s = inputs.quantize_weights(torch.randn(2, 2 * I, H) / H**0.5)
    args = [x.to(DEVICE) for x in (hs, hss, w1, w1s)]
    tiles = {}
    for stack in (False, True):
        up, gate = (torch.full((128, BM), float("nan"), device=DEVICE) for _ in range(2))
        w1_tile_kernel[(1,)](*args, up, gate, T, H=H, I=I, BM=BM, STACK=stack)
        tiles[stack] = (up.cpu(), gate.cpu())
    assert all(torch.equal(a, b) for a, b in zip(tiles[False], tiles[True], strict=True))
    x = (hs.float().view(T, H // 128, 128) * hss.t()[..., None]).view(T, H)
    w = (w1[1].float().view(2 * I // 128, 128, H // 128, 128) * w1s[1][:, None, :, None]).view(2 * I, H)
    for got, rows in zip(tiles[True], (slice(128, 256), slice(I + 128, I + 256)), strict=True):
        torch.testing.assert_close(got[:, :T], w[rows] @ x.t(), rtol=1e-4, atol=1e-4)
