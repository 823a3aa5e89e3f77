"""Rung 4's large-T path (variants/r4_fused/large_t.py), on the small definition: rung 3's launches with
GEMM1 replaced by the permute launch and the grouped Gluon GEMM1.

The Gluon kernel runs on Hopper only (tests/gpu/test_rung4_large_t_gpu.py). On the CPU the interpreter
runs the permute kernel, and a torch model of what the Gluon kernel computes from the permuted buffers
(`grouped_gemm1_model`, the math of GEMM_NOTES.md's block-scaled GEMM plus `_shared/quant.py`'s hi/lo
pair) stands in for it: that checks the contract between them (tile numbering, padding, row ids, the
scale layout) and that rung 3's GEMM2 and finalize take the C it writes. Buffers are poisoned before
each launch, so an element the permute kernel does not write cannot pass.
"""

import dataclasses
import sys

import pytest
import torch
from test_rung3 import DEVICE, _check_output  # noqa: E402  (same bounds as rung 3)

from fibmoe import dataset, inputs, variants
from fibmoe.geometry import SMALL

pytestmark = pytest.mark.slow  # Triton's CPU interpreter

BLOCK = 128
FP8_MAX = 448.0


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


def _workspace(large_t, inp):
    """A large-T workspace for a small workload: the sort launch forced (the table derives rows inline
    at small T), 32-row tiles in GEMM2."""
    T, E = inp[0].shape
    NL, N1, H = inp[4].shape
    tiles = large_t.tiles_for(T, 90)
    tiles = dataclasses.replace(tiles, inline_rows=False, fused_routing=False, routing_block_t=16, routing_warps=4,
                                gemm1_block_m=32, gemm2_block_m=32)  # fmt: skip
    return large_t.Workspace(inp[2].device, T, E, NL, H, N1 // 2, 90, tiles=tiles)


def _quant(c):
    """[M, 128] fp32 -> fp8 values and per-row scales, as `_shared/quant.quant_block` (torch's RNE cast)."""
    amax = c.abs().amax(dim=1)
    scale = amax / FP8_MAX
    q = (c / torch.where(amax > 0, scale, torch.ones_like(scale))[:, None]).clamp(-FP8_MAX, FP8_MAX)
    return q.to(torch.float8_e4m3fn), scale


def grouped_gemm1_model(ws, w1, w1s):
    """What the Gluon kernel writes, from the permuted buffers only: per tile t of expert tile_expert[t],
    G1 = sum over K blocks of (A_perm @ W1[e]^T) * sa_perm * w1_scale, SwiGLU, the hi/lo pair of each
    128-column block stored at each valid row's id (cq, cs)."""
    inter, hidden = ws.I, ws.H
    nkb = hidden // BLOCK
    for t in range(int(ws.n_tiles[0])):
        rows = slice(t * BLOCK, (t + 1) * BLOCK)
        rid = ws.rid_perm[rows].long()
        ok = rid >= 0
        e = int(ws.tile_expert[t])
        a = ws.a_perm[rows].float().view(BLOCK, nkb, BLOCK)
        w = w1[e].float().view(2 * inter, nkb, BLOCK)
        sw = w1s[e].float().repeat_interleave(BLOCK, dim=0)  # [2I, nkb]
        partial = torch.einsum("mkc,nkc->mkn", a, w)  # [rows, K blocks, 2I], one product per K block
        g1 = (partial * ws.sa_perm[:, rows].t()[:, :, None] * sw.t()[None]).sum(dim=1)
        up, gate = g1[:, :inter], g1[:, inter:]
        c = torch.nn.functional.silu(gate) * up
        for jb in range(inter // BLOCK):
            cb = c[:, jb * BLOCK : (jb + 1) * BLOCK]
            hi, s_hi = _quant(cb)
            lo, s_lo = _quant(cb - hi.float() * s_hi[:, None])
            cq = ws.cq.view(torch.uint8)  # (torch has no index_put for fp8 on the CPU)
            cq[rid[ok], jb * 2 * BLOCK : jb * 2 * BLOCK + BLOCK] = hi[ok].view(torch.uint8)
            cq[rid[ok], jb * 2 * BLOCK + BLOCK : (jb + 1) * 2 * BLOCK] = lo[ok].view(torch.uint8)
            ws.cs[rid[ok], jb, 0] = s_hi[ok]
            ws.cs[rid[ok], jb, 1] = s_lo[ok]


NAN_E4M3 = 0x7F


def _poison(ws):
    ws.a_perm.view(torch.uint8).fill_(NAN_E4M3)
    ws.sa_perm.fill_(float("nan"))
    ws.rid_perm.fill_(-7)
    ws.tile_expert.fill_(-7)
    ws.n_tiles.fill_(-7)


def _routing_and_sort(ws, inp):
    out = torch.zeros(inp[2].shape, dtype=torch.bfloat16, device=inp[2].device)
    launches = ws.launches(*inp[:8], int(inp[8]), float(inp[9]), out)
    assert [k for k, _ in launches[:2]] == [ws.k_route, ws.k_sort]
    for kernel, args in launches[:2]:
        kernel.slow(*args)


@pytest.mark.parametrize("T,seed", [(40, 11), (64, 12)])
def test_permute_lays_out_each_experts_rows_in_padded_tiles(small, T, seed):
    ds, large_t = small
    inp = _inputs(ds, T, seed)
    ws = _workspace(large_t, inp)
    _routing_and_sort(ws, inp)
    _poison(ws)
    ws.permute(inp[2], inp[3])
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
            assert torch.equal(ws.a_perm[rows][:n].float(), hs[tok])
            assert torch.equal(ws.a_perm[rows][n:].float(), torch.zeros(BLOCK - n, ws.H))  # padding: zeros
            assert torch.equal(ws.sa_perm[:, rows][:, :n], hss[:, tok])
            assert torch.equal(ws.sa_perm[:, rows][:, n:], torch.zeros(ws.H // BLOCK, BLOCK - n))
            tile += 1
    assert int(ws.n_tiles[0]) == tile
    assert tile <= ws.perm_max_tiles


@pytest.mark.parametrize("style,T,seed", [("contest", 40, 21), ("quantized", 64, 22)])
def test_rung3_gemm2_takes_the_grouped_gemm1s_c(small, style, T, seed):
    """A whole call through the large-T workspace, with the torch model in the Gluon kernel's place:
    the layer's output passes rung 3's bounds (tests/test_rung3.py), with offsets 0 and the last rank
    among the workloads."""
    ds, large_t = small
    inp = _inputs(ds, T, seed, style)
    ws = _workspace(large_t, inp)
    ws.cq.view(torch.uint8).fill_(NAN_E4M3)
    ws.cs.fill_(float("nan"))
    ws.grouped_gemm1 = lambda w1, w1s: grouped_gemm1_model(ws, w1, w1s)
    _poison(ws)
    out = torch.full((T, ws.H), float("nan"), dtype=torch.bfloat16, device=inp[2].device)
    assert ws.run(*inp, out) is out
    _check_output(out, inp)

