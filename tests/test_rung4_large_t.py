"""Rung 4's large-T path (variants/r4_fused/large_t.py), on the small definition: rung 3's routing, sort
and finalize launches around the permute launch and the two grouped Gluon GEMMs.

The Gluon kernels run on Hopper only (tests/gpu/test_rung4_large_t_gpu.py). On the CPU the interpreter
runs the permute kernel and rung 3's launches, and torch models of what the Gluon kernels compute stand
in for them (`grouped_gemm1_model`, `grouped_gemm2_model`: the math of GEMM_NOTES.md's block-scaled
GEMM, `_shared/quant.py`'s hi/lo pair and rung 3's GEMM2 epilogue), fed from the arguments the
workspace passes the kernels: that checks the contract between the launches (tile numbering, padding,
row ids, the permuted C and its scale layout, the parked rows) and the host path's plumbing. Buffers
are poisoned before each launch, so an element a launch does not write cannot pass.
"""

import dataclasses
import functools
import sys

import pytest
import torch
from test_rung3 import DEVICE, _check_output, _quant_c  # noqa: E402  (same bounds as rung 3)

from fibmoe import dataset, inputs, variants
from fibmoe.geometry import SMALL

pytestmark = pytest.mark.slow  # Triton's CPU interpreter

BLOCK = 128


@pytest.fixture(scope="module")
def small():
    """The small dataset, and rung 4's `large_t` module as packed for it."""
    ds = dataset.load(SMALL.name)
    fn = variants.build(variants.pack(variants.resolve(["r4-fused-persistent"])[0], ds.definition.name), ds.definition)
    return ds, sys.modules[variants.module_of(fn).__package__ + ".large_t"]


def _inputs(ds, T, seed, style="contest"):
    (w,) = [w for w in ds.workloads if w.workload.axes["seq_len"] == T]
    torch.manual_seed(seed)
    return inputs.generate(ds, w, DEVICE, style)


def _workspace(large_t, inp, **workspace_args):
    """A large-T workspace for a small workload, with the large-T table's choices that the small-T table
    makes otherwise: the routing and sort launches, bf16 parked rows."""
    T, E = inp[0].shape
    NL, N1, H = inp[4].shape
    tiles = dataclasses.replace(large_t.tiles_for(T, 90), inline_rows=False, fused_routing=False,
                                bf16_partial_rows=True, routing_block_t=16, routing_warps=4)  # fmt: skip
    return large_t.Workspace(inp[2].device, T, E, NL, H, N1 // 2, 90, tiles=tiles, **workspace_args)


def grouped_gemm1_model(a_desc, w_desc, sa_desc, w1s, tile_expert, n_tiles, rid_perm, cq, cs, tile_done, claims, hs,
                        hss, T, H, inter, MP, shared_lo=False):  # fmt: skip
    """What the Gluon GEMM1 writes, from its launch arguments: per tile t of expert tile_expert[t],
    G1 = sum over K blocks of (A @ W1[e]^T) * a_scale * w1_scale over the tile's rows of hidden_states (the
    rows rid_perm names: what the kernel gathers, or the permute's copy of them), SwiGLU, the hi/lo pair of
    each 128-column block at the tile's own rows (cq [MP, 2I]: hi then lo per block; cs [2I/128, MP]; with
    `shared_lo` the lo term in the hi term's scale). Padding rows (rid_perm -1) read as zeros, so their C
    is zero as the kernel writes it, whether or not it runs their MMAs. Each tile's C done, its
    count in tile_done goes up by the kernel's signals: one per consumer warpgroup and column block. The
    item counter the kernel claims from (`claims`, a view of the permute's) starts at 0."""
    assert int(claims[0]) == 0
    nkb = H // BLOCK
    w1 = w_desc.base.view(-1, 2 * inter, H)
    for t in range(int(n_tiles[0])):
        rows = slice(t * BLOCK, (t + 1) * BLOCK)
        e = int(tile_expert[t])
        rid = rid_perm[rows].long()
        tok = torch.where(rid >= 0, rid // 8, 0)
        real = (rid >= 0).float()
        a = (hs[tok].float() * real[:, None]).view(BLOCK, nkb, BLOCK)
        sa = hss[:, tok].float() * real[None, :]  # [nkb, rows]
        w = w1[e].float().view(2 * inter, nkb, BLOCK)
        sw = w1s[e].float().repeat_interleave(BLOCK, dim=0)  # [2I, nkb]
        partial = torch.einsum("mkc,nkc->mkn", a, w)  # [rows, K blocks, 2I], one product per K block
        g1 = (partial * sa.t()[:, :, None] * sw.t()[None]).sum(dim=1)
        c = torch.nn.functional.silu(g1[:, inter:]) * g1[:, :inter]
        (hi, s_hi), (lo, s_lo) = _quant_c(c, 2, shared_lo)  # rung 3's test's quantization of C
        nj = inter // BLOCK
        pair = torch.stack([hi.view(BLOCK, nj, BLOCK), lo.view(BLOCK, nj, BLOCK)], dim=2)  # per block: hi, lo
        cq.view(torch.uint8)[rows] = pair.reshape(BLOCK, 2 * inter).to(torch.float8_e4m3fn).view(torch.uint8)
        cs[:, rows] = torch.stack([s_hi, s_lo], dim=2).reshape(BLOCK, 2 * nj).t()
        tile_done[t] += 2 * nj


def grouped_gemm2_model(c_desc, w_desc, cs_desc, w2s, tile_expert, n_tiles, rid_perm, ids, w, out, obuf, tile_done,
                        claims, H, inter, NL, local_off):  # fmt: skip
    """What the Gluon GEMM2 writes, from its launch arguments: per tile, O = sum over C's K blocks (hi and
    lo of each I block) of (C @ W2[e]^T) * c_scale * w2_scale, times the routing weight; the bf16 row at
    the token's output row (one local expert) or parked at its row id (several). A tile is read only when
    tile_done holds all of GEMM1's signals for it, as the kernel waits for them (the count the permute
    zeroed plus GEMM1's: a count left from an earlier call would let the kernel read C too early). Its item
    counter starts at 0 too."""
    assert int(claims[0]) == 0
    nkb = inter // BLOCK
    w2 = w_desc.base.view(-1, H, inter)
    c_all, s_all = c_desc.base.float(), cs_desc.base
    n_local = ((ids - local_off >= 0) & (ids - local_off < NL)).sum(dim=1)
    for t in range(int(n_tiles[0])):
        rows = slice(t * BLOCK, (t + 1) * BLOCK)
        assert int(tile_done[t]) == 2 * nkb, (t, int(tile_done[t]))
        e = int(tile_expert[t])
        c = c_all[rows].view(BLOCK, nkb, 2, BLOCK)  # [rows, I block, term, 128]
        sc = s_all[:, rows].t().reshape(BLOCK, nkb, 2)
        wt = w2[e].float().view(H, nkb, BLOCK)
        sw = w2s[e].float().repeat_interleave(BLOCK, dim=0)  # [H, nkb]
        partial = torch.einsum("mktc,nkc->mktn", c, wt)
        o = (partial * sc[..., None] * sw.t()[None, :, None, :]).sum(dim=(1, 2))
        rid = rid_perm[rows].long()
        ok = rid >= 0
        rid = rid[ok]
        o = (o[ok] * w.view(-1)[rid][:, None]).to(torch.bfloat16)
        single = n_local[rid // 8] == 1
        out[rid[single] // 8] = o[single]
        obuf.view(-1, H)[rid[~single]] = o[~single]


class StandIn:
    """A launch whose kernel is a torch model (the Gluon kernels cannot run on the CPU)."""

    fast_ready = False

    def __init__(self, model):
        self.slow = model


NAN_E4M3 = 0x7F


def _poison(ws):
    ws.a_perm.view(torch.uint8).fill_(NAN_E4M3)
    ws.sa_perm.fill_(float("nan"))
    ws.rid_perm.fill_(-7)
    ws.tile_expert.fill_(-7)
    ws.n_tiles.fill_(-7)
    ws.tile_done.fill_(-7)
    ws.claims.fill_(-7)


def _routing_and_sort(ws, inp):
    out = torch.zeros(inp[2].shape, dtype=torch.bfloat16, device=inp[2].device)
    launches = ws.launches(*inp[:8], int(inp[8]), float(inp[9]), out)
    assert [k for k, _ in launches[:2]] == [ws.k_route, ws.k_sort]
    for kernel, args in launches[:2]:
        kernel.slow(*args)


@pytest.mark.parametrize("T,seed,gather", [(40, 11, False), (64, 12, False), (64, 13, True)])
def test_permute_lays_out_each_experts_rows_in_padded_tiles(small, T, seed, gather):
    """The tiles of each expert's rows, their row ids, the tile count and the zeroed counters; without
    `gather_rows` the copy of each row and its scales too (with it, GEMM1 gathers them: nothing copied)."""
    ds, large_t = small
    inp = _inputs(ds, T, seed)
    ws = _workspace(large_t, inp, gather_rows=gather)
    _routing_and_sort(ws, inp)
    _poison(ws)
    ws.k_permute.slow(*ws.permute_arguments(inp[2], inp[3]))
    ids = ws.ids.long() - int(inp[8])
    hs, hss = inp[2].float(), inp[3].float()
    tile = 0
    for e in range(ws.NL):
        rid = (ids == e).nonzero()  # (token, slot) in token order: the sort's order
        rid = (rid[:, 0] * ws.TOPK + rid[:, 1]).int()
        for first in range(0, len(rid), BLOCK):
            rows = slice(tile * BLOCK, (tile + 1) * BLOCK)
            n = min(BLOCK, len(rid) - first)
            assert int(ws.tile_expert[tile]) == e
            want = torch.full((BLOCK,), -1, dtype=torch.int32)
            want[:n] = rid[first : first + n]
            assert torch.equal(ws.rid_perm[rows].cpu(), want)
            tok = want[:n].long() // ws.TOPK
            tile += 1
            if gather:
                continue
            assert torch.equal(ws.a_perm[rows][:n].float(), hs[tok])
            assert torch.equal(ws.a_perm[rows][n:].float(), torch.zeros(BLOCK - n, ws.H))  # padding: zeros
            assert torch.equal(ws.sa_perm[:, rows][:, :n], hss[:, tok])
            assert torch.equal(ws.sa_perm[:, rows][:, n:], torch.zeros(ws.H // BLOCK, BLOCK - n))
    assert int(ws.n_tiles[0]) == tile
    assert tile <= ws.perm_max_tiles
    assert torch.equal(ws.tile_done.cpu(), torch.zeros(ws.perm_max_tiles, dtype=torch.int32))  # every slot
    assert not ws.claims.any()  # both GEMMs' item counters
    if gather:  # one unused tile, left as poisoned
        assert ws.a_perm.shape[0] == BLOCK and (ws.a_perm.view(torch.uint8) == NAN_E4M3).all()


@pytest.mark.parametrize("style,T,seed,shared_lo", [("contest", 40, 21, True), ("quantized", 64, 22, True),
                                                    ("contest", 64, 23, False)])  # fmt: skip
def test_a_call_through_the_permuted_gemms_passes_rung3s_bounds(small, style, T, seed, shared_lo):
    """A whole call through the large-T workspace's launches, with the torch models in the Gluon kernels'
    places: the layer's output passes rung 3's bounds (tests/test_rung3.py; the rows of tokens with
    several local experts are parked in bf16, as at large T), with offsets 0 and the last rank among the
    workloads; a second call on fresh inputs, every buffer poisoned again, too. `shared_lo`: C's lo term
    in its hi term's scale (`Workspace(shared_lo_scale=True)`, the default) or in its own (rung 3's)."""
    ds, large_t = small
    ws = _workspace(large_t, _inputs(ds, T, seed, style), shared_lo_scale=shared_lo)
    gemm1 = functools.partial(grouped_gemm1_model, shared_lo=shared_lo)
    for call in range(2):
        inp = _inputs(ds, T, seed + call, style)
        ws.k_gemm1_gluon, ws.k_gemm2_gluon = StandIn(gemm1), StandIn(grouped_gemm2_model)
        ws.cq_perm.view(torch.uint8).fill_(NAN_E4M3)
        ws.cs_perm.fill_(float("nan"))
        ws.obuf.fill_(float("nan"))
        _poison(ws)
        out = torch.full((T, ws.H), float("nan"), dtype=torch.bfloat16, device=inp[2].device)
        assert ws.run(*inp, out) is out
        _check_output(out, inp, parked_bf16=True, shared_lo=shared_lo)
        assert ws.stream is None  # stand-ins have no C launcher: every call takes the dispatcher path


def test_the_runner_builds_its_large_t_workspaces_with_the_arguments_given(small, monkeypatch):
    """`Runner(large_t_args=...)` (experiments: scripts/r4_tiles_sweep.py's --large-try, the GPU test's
    cases) hands its arguments to every large-T workspace it builds, once per workload; without them the
    workspace gets its defaults. Above the fused T, where the Gluon path runs (faked here: the CPU has
    no Hopper), with a stand-in workspace that records how it was built."""
    ds, large_t = small
    main = sys.modules[large_t.__package__ + ".main"]
    built = []

    class Recorder:
        def __init__(self, *args, **kwargs):
            built.append(kwargs)

        def run(self, *args):
            return args[-1]

    monkeypatch.setattr(main, "gluon_supported", lambda device: True)
    monkeypatch.setattr(main.large_t, "Workspace", Recorder)
    inp = _inputs(ds, 40, 31)
    T = main.MAX_FUSED_T + 1  # the routing logits' row count is all the runner reads before the workspace
    inp[0] = torch.zeros(T, inp[0].shape[1])
    out = torch.empty(T, inp[2].shape[1], dtype=torch.bfloat16)
    for args, want in ((None, {}), (dict(shared_lo_scale=False, gemm2_columns=128),) * 2):
        built.clear()
        runner = main.Runner(large_t_args=args)
        assert runner(*inp, out) is out and runner(*inp, out) is out
        assert built == [want]



def test_the_runner_takes_the_large_t_path_above_its_fused_max_t(small, monkeypatch):
    """`Runner(fused_max_t=n)` (experiments: r4_tiles_sweep's --large-path) sends a call above n tokens to the
    large-T path; the default sends only calls above MAX_FUSED_T there."""
    ds, large_t = small
    main = sys.modules[large_t.__package__ + ".main"]
    large_calls = []
    monkeypatch.setattr(main, "run_rung3", lambda *args: large_calls.append(args[0].shape[0]) or args[-1])
    inp = _inputs(ds, 40, 32)
    out = torch.full((40, inp[2].shape[1]), float("nan"), dtype=torch.bfloat16)
    assert main.Runner(large_t_gluon=False, fused_max_t=39)(*inp, out) is out and large_calls == [40]
    assert main.Runner(large_t_gluon=False, fused_max_t=40)(*inp, out) is out and large_calls == [40]
    assert not out.isnan().any()  # the fused path wrote every element


def test_a_misaligned_input_takes_rung3s_kernels(small, monkeypatch):
    """The large-T kernels read through TMA descriptors and 16-byte cp.async: a call whose hidden_states
    sits off 16-byte alignment goes to rung 3's path, and none of the workspace's launches runs."""
    ds, large_t = small
    inp = _inputs(ds, 40, 33)
    ws = _workspace(large_t, inp)
    rung3_calls = []
    monkeypatch.setattr(large_t, "run_rung3", lambda *args: rung3_calls.append(args[2].data_ptr()) or args[-1])
    ws.k_route = ws.k_permute = None  # a launch would fail
    shifted = torch.empty(inp[2].numel() + 1, dtype=inp[2].dtype)[1:].view(inp[2].shape)
    shifted.copy_(inp[2])
    out = torch.empty(inp[2].shape, dtype=torch.bfloat16)
    assert ws.run(*inp[:2], shifted, *inp[3:], out) is out
    assert rung3_calls == [shifted.data_ptr()]
