"""`fibmoe check`: every variant, loaded exactly as flashinfer-bench loads its packed Solution, run on
fresh random inputs for each trial of each workload and judged against the reference."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field

import torch

from . import inputs as inputs_mod
from . import judge, reference, variants
from .dataset import Dataset, routing_tensors


@dataclass
class Case:
    """One variant on one workload: the worst of its trials."""

    variant: str
    uuid: str
    seq_len: int
    trials: list = field(default_factory=list)  # judge.Verdict per trial
    skipped: str = ""

    @property
    def status(self) -> str:
        if self.skipped:
            return judge.SKIPPED
        failed = [v.status for v in self.trials if v.status != judge.PASSED]
        return failed[0] if failed else judge.PASSED

    def worst(self, key: str, pick=max):
        vals = [getattr(v, key) for v in self.trials if getattr(v, key) is not None]
        return pick(vals) if vals else None

    def to_dict(self) -> dict:
        return {
            "variant": self.variant,
            "uuid": self.uuid,
            "seq_len": self.seq_len,
            "status": self.status,
            "max_abs_error": self.worst("max_abs_error"),
            "rel_l2_error": self.worst("rel_l2_error"),
            "matched_ratio": self.worst("matched_ratio", min),
            "routing_agreement": self.worst("routing_agreement", min),
            "message": self.skipped or next((v.message for v in self.trials if v.message), ""),
            "trials": [v.to_dict() for v in self.trials],
        }


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import FibmoeError

        raise FibmoeError("--device cuda: no CUDA device is visible on this machine")
    return device


def skip_reason(variant: variants.Variant, ds: Dataset, device: str) -> str:
    """Why a variant cannot run here, or '' when it can."""
    spec = variant.spec
    kind = device.split(":")[0]
    if kind == "cpu" and spec.language == "triton":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return "Triton on a CPU needs TRITON_INTERPRET=1"
        if ds.definition.const_axes["hidden_size"] > 1024:
            return "Triton interpreter at contest size would take hours: use --definition small or a GPU"
        return ""
    if kind not in spec.target_hardware:
        return f"targets {', '.join(spec.target_hardware)}, not {kind}"
    return ""


def reference_outputs(ds: Dataset, inp: list):
    """(bf16 output as the definition's reference computes it, our fp32 result before the cast)."""
    ref32 = reference.forward(*inp)
    if ds.definition.reference == reference_source():
        return ref32.to(torch.bfloat16), ref32
    return _definition_reference(ds)(*inp), ref32  # someone else's definition: judge by its reference


def reference_source() -> str:
    from .definition import REFERENCE_SOURCE

    return REFERENCE_SOURCE.read_text()


def _definition_reference(ds: Dataset):
    from flashinfer_bench.compile import BuilderRegistry

    return BuilderRegistry.get_instance().build_reference(ds.definition)


def call(runnable, inp: list, out_like: torch.Tensor):
    """Call a built solution the way the harness does; DPS gets a NaN-poisoned output to fill."""
    if runnable.metadata.destination_passing_style:
        out = torch.full_like(out_like, float("nan"))
        runnable(*inp, out)
        return out
    return runnable(*inp)


def _sync(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_check(
    chosen: list[variants.Variant],
    ds: Dataset,
    workloads: list,
    device: str,
    trials: int = 3,
    style: str = "contest",
    progress=None,
) -> list[Case]:
    """Judge every variant on every workload; each trial draws fresh inputs shared by all variants."""
    built, cases = {}, []
    for v in chosen:
        reason = skip_reason(v, ds, device)
        built[v.name] = None if reason else variants.build(variants.pack(v, ds.definition.name), ds.definition)
        for w in workloads:
            cases.append(Case(v.name, w.workload.uuid, w.workload.axes["seq_len"], skipped=reason))
    by_key = {(c.variant, c.uuid): c for c in cases}

    for w in workloads:
        routing = routing_tensors(ds, w)
        for trial in range(trials):
            inp = inputs_mod.generate(ds, w, device, style, routing=routing)
            ref_bf16, ref32 = reference_outputs(ds, inp)
            ref_experts = reference.route(inp[0], inp[1], inp[9])[0]
            for v in chosen:
                case, runnable = by_key[(v.name, w.workload.uuid)], built[v.name]
                if runnable is None:
                    continue
                if progress:
                    progress(f"{v.name} T={case.seq_len} {w.workload.uuid[:8]} trial {trial + 1}/{trials}")
                case.trials.append(_judge_one(runnable, inp, ref_bf16, ref32, ref_experts, device))
            del inp
    return cases


def _judge_one(runnable, inp, ref_bf16, ref32, ref_experts, device) -> judge.Verdict:
    try:
        out = call(runnable, inp, ref_bf16)
        _sync(device)
    except Exception as e:  # the solution's failure is a verdict, not a crash of the harness
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        return judge.Verdict(judge.RUNTIME_ERROR, message=last[:300])
    verdict = judge.judge(out, ref_bf16, ref32)
    route = getattr(variants.module_of(runnable), "route", None)
    if route is not None:
        try:
            experts = route(inp[0], inp[1], inp[9])[0]
            verdict.routing_agreement = judge.routing_agreement(experts, ref_experts)
        except Exception as e:
            verdict.message = (verdict.message + f"; route() failed: {e}").strip("; ")
    return verdict


def all_passed(cases: list[Case]) -> bool:
    return all(c.status in (judge.PASSED, judge.SKIPPED) for c in cases) and any(
        c.status == judge.PASSED for c in cases
    )
