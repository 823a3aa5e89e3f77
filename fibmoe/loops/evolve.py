"""`fibmoe evolve`: population search with OpenEvolve as the engine (islands, MAP-Elites, diff-based
mutations, checkpoints), configured from our options, with our evaluation as its evaluation function.

What is ours: the model client (`LLM`, so Claude works as well as any OpenAI-compatible endpoint, and every
call's tokens and cost are recorded), the cascade of evaluation stages, promotion and the run folder.
What is OpenEvolve's: everything evolutionary. It evolves one file, the start's entry file; the start's other
files (if any) are packed beside every candidate unchanged.

The cascade (OpenEvolve stops a candidate at the first stage below its threshold):
  1. build-and-check: the static checks, then `fibmoe eval --quick` on the smallest workload only;
  2. `fibmoe eval --quick` (5 workloads spread over T, 1 trial);
  3. the full evaluation, repeated (`repeats`): the candidate's score is the lowest of the runs if all passed,
     0 otherwise; a candidate verified there that beats the best so far becomes best/.
Every evaluation is a subprocess under a hard limit (`sandbox`), and its JSON stays in the candidate's
folder, named by the code's hash, so a resumed run (from OpenEvolve's last checkpoint, one per iteration by
default) does not evaluate the same code twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FibmoeError
from ..processes import interruptible
from . import candidate as cand
from . import prompting, sandbox
from .agent import eval_lines, start_candidate
from .llm import LLM, LLMConfig, Usage
from .runs import Display, Run, gain, read_jsonl, reopen

RUN_ENV = "FIBMOE_EVOLVE_RUN"  # tells OpenEvolve's worker processes which run they serve
USAGE = "usage.jsonl"
EVALS = "evals.jsonl"
QUICK_THRESHOLD = 0.01  # a quick stage passes when every workload passed (combined_score > 0)


@dataclass
class EvolveConfig:
    start: str = "examples/openevolve/initial_program.py"  # a variant name or folder, or a kernel .py file
    iterations: int = 20
    llm: LLMConfig = field(default_factory=LLMConfig)
    eval: sandbox.EvalOptions = field(default_factory=sandbox.EvalOptions)
    islands: int = 3
    population: int = 100
    checkpoint_interval: int = 1
    quick_threshold: float = QUICK_THRESHOLD
    seed: int = 42
    prompts_dir: str | None = None
    smoke_seq_len: int | None = None  # the smallest T of the evaluated workloads (stage 1)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["llm"], d["eval"] = self.llm.to_dict(), self.eval.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EvolveConfig:
        d = dict(d)
        d["llm"], d["eval"] = LLMConfig.from_dict(d["llm"]), sandbox.EvalOptions.from_dict(d["eval"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# ---- inside OpenEvolve's processes: the model client and the evaluation stages --------------------------


_RUNS: dict[str, tuple[Run, EvolveConfig, cand.Candidate]] = {}  # per process: the run this worker serves


def _context(folder: str | None = None):
    folder = folder or os.environ[RUN_ENV]
    if folder not in _RUNS:
        run = Run(Path(folder))
        config = EvolveConfig.from_dict(run.config["evolve"])
        _RUNS[folder] = (run, config, cand.load_folder(run.folder / "start"))
    return _RUNS[folder]


def openevolve_client(model_cfg):
    """OpenEvolve's `init_client` hook: our LLM behind its LLMInterface (picklable: module level)."""
    from openevolve.llm.base import LLMInterface

    run, config, _ = _context()

    class FibmoeLLM(LLMInterface):
        def __init__(self):
            self.llm = LLM(config.llm)
            self.model = config.llm.model  # OpenEvolve's ensemble logs it
            self.last_usage = None

        async def generate(self, prompt: str, **kwargs) -> str:
            return await self.generate_with_context("", [{"role": "user", "content": prompt}], **kwargs)

        async def generate_with_context(self, system_message: str, messages: list, **kwargs) -> str:
            user = "\n\n".join(m["content"] for m in messages if m.get("role") == "user")
            reply = self.llm.complete(system_message, user)
            self.last_usage = reply.usage.to_dict()
            _append(run.folder / USAGE, {"response_sha": _sha(reply.text), **reply.usage.to_dict()})
            return reply.text

    return FibmoeLLM()


def stage(folder: str, n: int, program_path: str):
    """OpenEvolve's evaluate_stage{n}: metrics (combined_score first) and artifacts the model reads."""
    from openevolve.evaluation_result import EvaluationResult

    run, config, start = _context(folder)
    code = Path(program_path).read_text()
    c = cand.Candidate(files={**start.files, start.entry_file: code}, entry_file=start.entry_file, entry=start.entry)
    cid = f"e-{c.digest()}"
    cdir = run.candidate_dir(cid)
    if not (cdir / "variant.toml").is_file():
        c.write(cdir, f"{run.name.lower()}-{cid}", f"fibmoe evolve {run.name}")
    stage_options = _stage_options(config, n)
    evaluator = sandbox.Evaluator(stage_options, run.lock_dir)
    if n == 1:
        problems = cand.static_problems(c)
        if problems:
            text = "static checks refused it:\n" + "\n".join(problems)
            _append(
                run.folder / EVALS, {"id": cid, "stage": 1, "status": sandbox.REJECTED, "score": None, "error": text}
            )
            return EvaluationResult(metrics={"combined_score": 0.0}, artifacts={"static_checks": text})
        res = evaluator.evaluate(cdir, "smoke", quick=True)
        status = "passed" if res.get("all_passed") else (sandbox.TIMEOUT if res.get("timed_out") else "failed-smoke")
    elif n == 2:
        # When the evaluation is restricted to the smallest workload alone, stage 1 already ran this very command.
        same = _stage_options(config, 1).command(cdir, True) == config.eval.command(cdir, True)
        res = evaluator.evaluate(cdir, "smoke" if same else "quick", quick=True)
        status = "passed" if res.get("all_passed") else (sandbox.TIMEOUT if res.get("timed_out") else "failed-quick")
    else:
        v = evaluator.verdict(cdir, quick_first=False)
        res, status = v["eval"], v["status"]
        res = {**res, "combined_score": v["score"] or 0.0}
        if status == sandbox.VERIFIED:
            _maybe_promote(run, cid, v["score"], config.eval)
    _append(
        run.folder / EVALS,
        {"id": cid, "stage": n, "status": status, "score": res.get("combined_score"), "error": res.get("error")},
    )
    metrics = {
        "combined_score": float(res.get("combined_score") or 0.0),
        f"stage{n}_passed": float(status in ("passed", sandbox.VERIFIED)),
    }
    if res.get("workloads"):
        metrics["pass_rate"] = res["passed"] / res["workloads"]
    for key in ("mean_speedup_vs_reference", "mean_fraction_of_floor", "max_rel_l2_error"):
        if res.get(key) is not None:
            metrics[key] = float(res[key])
    artifacts = {f"stage{n}": status}
    if res.get("error"):
        artifacts["error"] = str(res["error"])[-3000:]
    if res.get("per_workload"):
        artifacts["per_workload"] = eval_lines(res)
    return EvaluationResult(metrics=metrics, artifacts=artifacts)


def _stage_options(config: EvolveConfig, n: int) -> sandbox.EvalOptions:
    if n != 1 or config.smoke_seq_len is None:
        return config.eval
    opts = sandbox.EvalOptions.from_dict(config.eval.to_dict())
    opts.workloads, opts.seq_lens = [], [config.smoke_seq_len]
    return opts


@contextmanager
def _locked(path: Path):
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _maybe_promote(run: Run, cid: str, score: float, options: sandbox.EvalOptions) -> None:
    """best/ follows the highest verified score; workers may finish together, hence the lock."""
    with _locked(run.folder / ".promote.lock"):
        best = run.summary().get("best")
        if options.beats(score, best and best["score"]):
            run.promote(cid, score, f"found by fibmoe evolve run {run.name}")
            s = run.summary()
            s["best"] = {"id": cid, "score": score, "variant": str(run.folder / "best")}
            run.write_summary(s)


def _append(path: Path, entry: dict) -> None:
    with _locked(path.with_name(path.name + ".lock")), open(path, "a") as fh:
        fh.write(json.dumps(entry) + "\n")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


EVALUATOR_FILE = '''"""Written by `fibmoe evolve` for OpenEvolve: each stage is fibmoe.loops.evolve.stage."""
from fibmoe.loops import evolve

RUN = {run!r}


def evaluate_stage1(program_path):
    return evolve.stage(RUN, 1, program_path)


def evaluate_stage2(program_path):
    return evolve.stage(RUN, 2, program_path)


def evaluate_stage3(program_path):
    return evolve.stage(RUN, 3, program_path)


def evaluate(program_path):
    return evolve.stage(RUN, 3, program_path)
'''


# ---- the parent process: set up, drive OpenEvolve, read its checkpoints back --------------------------


def openevolve_config(run: Run, config: EvolveConfig):
    from openevolve.config import Config, LLMModelConfig
    from openevolve.config import LLMConfig as OELLMConfig

    oe = Config()
    oe.max_iterations = config.iterations
    oe.checkpoint_interval = max(1, config.checkpoint_interval)
    oe.random_seed = config.seed
    oe.language = "python"
    oe.file_suffix = ".py"
    oe.diff_based_evolution = True
    oe.max_code_length = 200_000  # rung 3 is ~50 kB; the model, not a length cap, decides what is useful
    oe.log_level = "WARNING"
    oe.log_dir = str(run.folder / "openevolve" / "logs")
    model = LLMModelConfig(name=config.llm.model, init_client=openevolve_client, weight=1.0)
    oe.llm = OELLMConfig(models=[model], api_base=config.llm.base_url or "unused", max_tokens=config.llm.max_tokens)
    oe.prompt.system_message = prompting.render(
        "evolve_system.md", config.prompts_dir, definition=config.eval.definition
    )
    oe.database.num_islands = config.islands
    oe.database.population_size = config.population
    oe.database.archive_size = min(config.population, 50)
    oe.database.random_seed = config.seed
    ev = oe.evaluator
    ev.cascade_evaluation = True
    ev.cascade_thresholds = [QUICK_THRESHOLD, config.quick_threshold]
    ev.parallel_evaluations = len(config.eval.slots())
    ev.max_retries = 0  # a failing kernel fails again: do not pay for it twice
    ev.use_llm_feedback = False
    # Our own limit kills each evaluation's process group; OpenEvolve's outer limit only backs it up.
    ev.timeout = int(config.eval.timeout_s * (max(1, config.eval.repeats) + 1) + 120)
    return oe


def latest_checkpoint(run: Run) -> Path | None:
    root = run.folder / "openevolve" / "checkpoints"
    found = [p for p in root.glob("checkpoint_*") if p.name.split("_")[-1].isdigit()] if root.is_dir() else []
    return max(found, key=lambda p: int(p.name.split("_")[-1]), default=None)


def write_lineage(run: Run, config: EvolveConfig) -> list[dict]:
    """lineage.jsonl from OpenEvolve's last checkpoint (ids, parents, iterations) joined with our stage
    records (status, score, error) and the recorded model calls (tokens)."""
    checkpoint = latest_checkpoint(run)
    if checkpoint is None:
        return []
    start = cand.load_folder(run.folder / "start")
    evals: dict[str, dict] = {}
    for e in read_jsonl(run.folder / EVALS):
        evals[e["id"]] = e  # the last stage reached wins
    usage = {u["response_sha"]: u for u in read_jsonl(run.folder / USAGE)}
    programs = []
    for p in sorted((checkpoint / "programs").glob("*.json")):
        try:
            programs.append(json.loads(p.read_text()))
        except ValueError:
            continue
    cid_of = {}
    for p in programs:
        files = {**start.files, start.entry_file: p["code"]}
        cid_of[p["id"]] = "e-" + cand.Candidate(files=files, entry_file=start.entry_file).digest()
    entries = []
    for p in sorted(programs, key=lambda p: (p.get("iteration_found", 0), p.get("timestamp", 0))):
        cid = cid_of[p["id"]]
        e = evals.get(cid, {})
        responses = [
            r for v in (p.get("prompts") or {}).values() if isinstance(v, dict) for r in v.get("responses", [])
        ]
        tokens = Usage()
        for r in responses:
            if _sha(r) in usage:
                tokens.add(Usage.from_dict(usage[_sha(r)]))
        entries.append(
            {
                "id": cid,
                "program_id": p["id"],
                "parent": cid_of.get(p.get("parent_id")),
                "step": p.get("iteration_found", 0),
                "score": e.get("score") if e.get("stage") == 3 else None,
                "status": e.get("status", "unknown") if e.get("stage") == 3 else _short(e),
                "stage_reached": e.get("stage"),
                "tokens": tokens.to_dict(),
                "error": (e.get("error") or None) and str(e["error"])[-1000:],
            }
        )
    path = run.folder / "lineage.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
    tmp.replace(path)
    return entries


def _short(e: dict) -> str:
    return e.get("status", "unknown") if e else "not evaluated"


def summarize(run: Run, config: EvolveConfig, entries: list[dict]) -> dict:
    prior = run.summary()
    total = Usage()
    for u in read_jsonl(run.folder / USAGE):
        total.add(Usage.from_dict(u))
    statuses: dict[str, int] = {}
    for e in entries:
        statuses[e["status"]] = statuses.get(e["status"], 0) + 1
    start_score = next((e["score"] for e in entries if e["step"] == 0 and e["parent"] is None), None)
    best = prior.get("best")
    checkpoint = latest_checkpoint(run)
    summary = {
        "run": run.name,
        "folder": str(run.folder),
        "mode": "evolve",
        "start": {"from": config.start, "score": start_score},
        "best": best,
        "gain_over_start": gain(start_score, best["score"] if best else None),
        "iterations_done": int(checkpoint.name.split("_")[-1]) if checkpoint else 0,
        "iterations": config.iterations,
        "candidates": len(entries),
        "statuses": statuses,
        "usage": total.to_dict(),
        "model": f"{config.llm.provider}:{config.llm.model}",
    }
    run.write_summary(summary)
    return summary


def evolve(
    config: EvolveConfig | None = None, resume: Path | None = None, runs_dir: Path | None = None, display=None
) -> dict:
    """Start an evolve run (or resume one from its last checkpoint) and carry it to the end."""
    interruptible()
    try:
        from openevolve.controller import OpenEvolve
    except ImportError:
        raise FibmoeError("fibmoe evolve needs the openevolve package: pip install openevolve==0.4.0") from None
    if resume:
        run, config = reopen(resume, "evolve", EvolveConfig.from_dict, config, "iterations")
    else:
        if config is None:
            raise FibmoeError("no configuration for a new evolve run")
        start = start_candidate(config.start)
        if start is None:
            raise FibmoeError("fibmoe evolve needs a kernel to start from: --from VARIANT or a kernel .py file")
        LLM(config.llm).check_ready()
        config.smoke_seq_len = config.smoke_seq_len or _smallest_seq_len(config.eval)
        run = Run.create("evolve", {"evolve": config.to_dict()}, runs_dir)
        start.write(run.folder / "start", f"{run.name.lower()}-start", f"the start of {run.name}: {config.start}")
    start = cand.load_folder(run.folder / "start")
    (run.folder / "evaluator.py").write_text(EVALUATOR_FILE.format(run=str(run.folder)))
    program = run.folder / "start" / start.entry_file
    os.environ[RUN_ENV] = str(run.folder)
    checkpoint = latest_checkpoint(run)
    done = int(checkpoint.name.split("_")[-1]) if checkpoint else 0
    remaining = config.iterations - done
    display = display or Display(run, config.iterations)
    t0 = time.monotonic()
    logging.getLogger("openevolve").setLevel(logging.WARNING)
    with display:
        display.update(log=True, doing=f"{'resuming at iteration ' + str(done) if checkpoint else 'starting'}")
        if remaining > 0:
            import asyncio

            controller = OpenEvolve(
                initial_program_path=str(program),
                evaluation_file=str(run.folder / "evaluator.py"),
                config=openevolve_config(run, config),
                output_dir=str(run.folder / "openevolve"),
            )
            task = controller.run(iterations=remaining, checkpoint_path=str(checkpoint) if checkpoint else None)
            asyncio.run(_with_display(task, run, config, display))
        entries = write_lineage(run, config)
        summary = summarize(run, config, entries)
        summary["wall_s_this_session"] = round(time.monotonic() - t0, 1)
        run.write_summary(summary)
        _show(display, summary, "done" if summary["iterations_done"] >= config.iterations else "stopped early")
    if summary["iterations_done"] < config.iterations:
        print(f"continue with: fibmoe evolve --resume {run.folder}", file=sys.stderr)
    return summary


async def _with_display(task, run: Run, config: EvolveConfig, display: Display):
    """Run OpenEvolve, refreshing the status line from the run folder every few seconds."""
    import asyncio

    job = asyncio.ensure_future(task)
    seen = 0
    while not job.done():
        await asyncio.sleep(2)
        evals = read_jsonl(run.folder / EVALS)
        if len(evals) != seen:
            seen = len(evals)
            last = evals[-1]
            score = f" {last['score']:.4g}" if isinstance(last.get("score"), (int, float)) else ""
            total = Usage()
            for u in read_jsonl(run.folder / USAGE):
                total.add(Usage.from_dict(u))
            checkpoint = latest_checkpoint(run)
            best = run.summary().get("best")
            display.update(
                log=True,
                step=int(checkpoint.name.split("_")[-1]) if checkpoint else 0,
                doing="evolving",
                best=best["score"] if best else None,
                start=_start_score(run),
                last=f"{last['id']} stage {last['stage']} {last['status']}{score}",
                usage=total,
            )
    return job.result()


def _start_score(run: Run) -> float | None:
    start = cand.load_folder(run.folder / "start")
    cid = f"e-{start.digest()}"
    for e in read_jsonl(run.folder / EVALS):
        if e["id"] == cid and e["stage"] == 3:
            return e.get("score")
    return None


def _show(display: Display, summary: dict, doing: str) -> None:
    best = summary.get("best")
    display.update(
        log=True,
        step=summary["iterations_done"],
        doing=doing,
        best=best["score"] if best else None,
        start=summary["start"]["score"],
        usage=Usage.from_dict(summary["usage"]),
    )


def _smallest_seq_len(opts: sandbox.EvalOptions) -> int | None:
    """The smallest T among the workloads evaluated (stage 1 builds and checks on it alone)."""
    from .. import check
    from .. import dataset as dataset_mod

    if opts.backend == "modal":
        return None
    device = check.resolve_device(opts.device)
    definition = opts.definition if opts.definition != "auto" else ("contest" if device.startswith("cuda") else "small")
    ds = dataset_mod.load(dataset_mod.resolve_definition(definition).name, None)
    chosen = ds.select(opts.workloads or None, opts.seq_lens or None)
    return min(w.workload.axes["seq_len"] for w in chosen) if chosen else None
