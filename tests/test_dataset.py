"""The bundled dataset: valid for flashinfer-bench as it stands, reproducible, and the contest's."""

import filecmp

import torch

from fibmoe import dataset, reference
from fibmoe.definition import REFERENCE_SOURCE
from fibmoe.geometry import CONTEST, SMALL
from fibmoe.roofline import GPU_TABLE, work_of


def test_folder_is_a_flashinfer_bench_dataset_with_both_definitions():
    from flashinfer_bench import TraceSet

    ts = TraceSet.from_path(str(dataset.BUNDLED))
    assert set(ts.definitions) == {CONTEST.name, SMALL.name}
    assert len(ts.workloads[CONTEST.name]) == 19
    for name, defn in ts.definitions.items():
        assert defn.reference == REFERENCE_SOURCE.read_text(), f"{name}: regenerate with `make workloads`"


def test_contest_workloads_are_the_nineteen_of_track_a():
    ds = dataset.load(CONTEST.name)
    got = [
        (w.workload.uuid, w.workload.axes["seq_len"], w.workload.inputs["local_expert_offset"].value)
        for w in ds.workloads
    ]
    assert got == dataset.CONTEST_WORKLOADS
    for w in ds.workloads:
        inputs = w.workload.inputs
        assert inputs["routed_scaling_factor"].value == 2.5
        assert [n for n, s in inputs.items() if s.type == "random"] == list(dataset.RANDOM_INPUTS)
        assert {inputs["routing_logits"].type, inputs["routing_bias"].type} == {"safetensors"}


def test_routing_blobs_have_the_captured_statistics():
    ds = dataset.load(CONTEST.name)
    for w in ds.workloads:
        r = dataset.routing_tensors(ds, w)
        logits, bias = r["routing_logits"], r["routing_bias"]
        assert torch.equal(logits, logits.to(torch.bfloat16).float())  # on the bf16 grid
        assert set(bias.float().unique().tolist()) == {4.9375, 4.96875}
        t = w.workload.axes["seq_len"]
        rows = work_of(CONTEST, logits, bias, w.workload.inputs["local_expert_offset"].value).local_rows
        assert abs(rows - dataset.target_local_rows(t)) <= max(1, 0.01 * rows), (t, rows)


def test_generation_is_deterministic(tmp_path):
    dataset.generate(tmp_path)
    cmp = filecmp.dircmp(dataset.BUNDLED, tmp_path)

    def same(c):
        assert not c.left_only and not c.right_only and not c.diff_files, (c.left, c.diff_files)
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        assert not mismatch and not errors, mismatch
        for sub in c.subdirs.values():
            same(sub)

    same(cmp)


def test_roofline_floor_matches_track_a():
    h100 = GPU_TABLE[0]
    assert CONTEST.weight_bytes_per_expert() == 44_050_944  # 44.05 MB incl. 10.75 KB of scales
    assert CONTEST.bytes_per_token() == 22_752  # 22.75 KB
    assert CONTEST.flops_per_local_row() == 88_080_384  # 88.08 MFLOP
    ds = dataset.load(CONTEST.name)
    t1 = next(w for w in ds.workloads if w.workload.axes["seq_len"] == 1)
    r = dataset.routing_tensors(ds, t1)
    work = work_of(CONTEST, r["routing_logits"], r["routing_bias"], 32)
    assert (work.active_experts, work.local_rows) == (3, 3)
    assert abs(work.floor_s(h100) - 44.1e-6) < 0.5e-6 and work.bound(h100) == "memory"


def test_small_definition_exercises_the_last_rank_and_empty_tokens():
    ds = dataset.load(SMALL.name)
    offsets = {w.workload.inputs["local_expert_offset"].value for w in ds.workloads}
    assert 48 in offsets and 0 in offsets
    empty = 0
    for w in ds.workloads:
        r = dataset.routing_tensors(ds, w)
        local = reference.route(r["routing_logits"], r["routing_bias"], 2.5)[0] - w.workload.inputs[
            "local_expert_offset"
        ].value
        empty += int((~((local >= 0) & (local < 16)).any(1)).sum())
    assert empty > 0  # some tokens hit no local expert: their rows must come out as exact zeros
