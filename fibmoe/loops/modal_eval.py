"""The loops' Modal backend: `python -m fibmoe.loops.modal_eval CANDIDATE --gpu B200 [--quick] ...`.

It speaks `fibmoe eval --json`'s contract (one JSON object with combined_score, all_passed, per_workload,
error; exit 0 when every workload passed, 1 when the candidate failed, 2 for bad input), but runs the
candidate through the existing remote path (`remote.run_remote`: flashinfer-bench's official Benchmark in a
Modal container), so `--eval-backend modal` needs no GPU here. The loops start it in a subprocess under
their time limit like any evaluation. The result also carries the official score against the FlashInfer
baseline where the container could run it (Blackwell).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable

from .. import dataset, evaluate, judge, official, remote, variants
from ..errors import FibmoeError


def evaluate_remote(
    target: str,
    gpu: str,
    definition: str = "contest",
    quick: bool = False,
    workloads: list[str] | None = None,
    seq_lens: list[int] | None = None,
    executor: Callable | None = None,
) -> dict:
    """One candidate on a Modal GPU, as eval JSON. `executor` stands in for Modal in tests."""
    gpu = remote.resolve_gpu(gpu)
    geometry = dataset.resolve_definition(definition)
    ds = dataset.load(geometry.name, None)  # the local copy: which uuids to send
    selected = ds.select(workloads or None, seq_lens or None)
    if quick and not (workloads or seq_lens):
        selected = evaluate.quick_workloads(selected)
    timing = evaluate.QUICK if quick else evaluate.FULL
    with tempfile.TemporaryDirectory(prefix="fibmoe-modal-eval-") as tmp:
        v = evaluate.load_candidate(target, Path(tmp))
        base = {
            "candidate": v.name,
            "language": v.spec.language,
            "source": target,
            "definition": geometry.name,
            "device": f"modal:{gpu}",
            "mode": ("quick" if quick else "full") + " official",
            "settings": {"warmup": timing.warmup, "iterations": timing.iterations, "trials": timing.trials},
        }
        try:
            solution = variants.pack(v, geometry.name)
        except FibmoeError as e:
            rows = evaluate._rows_not_run(v.name, selected, judge.COMPILE_ERROR)
            return evaluate.result(base, rows, "build", evaluate.error_text(e))
    settings = official.OfficialSettings(warmup=timing.warmup, iterations=timing.iterations, trials=timing.trials)
    payload = remote.run_remote(
        [solution],
        geometry.name,
        gpu,
        settings,
        executor=executor,
        workload_uuids=[w.workload.uuid for w in selected],
        all_uuids=[w.workload.uuid for w in selected],
    )
    rows = [r for r in payload["records"] if not r.get("baseline")]  # the official records are eval rows
    stage = "bench" if rows and all(r["status"] == judge.PASSED for r in rows) else "check"
    res = evaluate.result(base, rows, stage)
    res["official_score_vs_baseline"] = payload["summary"].get(v.name, {}).get("score_vs_baseline")
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fibmoe.loops.modal_eval", description=__doc__.splitlines()[0])
    p.add_argument("target", help="a kernel file, a Solution JSON, a variant name or folder")
    p.add_argument("--gpu", default=remote.DEFAULT_GPU)
    p.add_argument("--definition", default="contest")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workload", "-w", action="append", default=[])
    p.add_argument("--seq-len", "-t", action="append", type=int, default=[])
    args = p.parse_args(argv)
    try:
        res = evaluate_remote(args.target, args.gpu, args.definition, args.quick, args.workload, args.seq_len)
    except FibmoeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2))
    return 0 if res["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
