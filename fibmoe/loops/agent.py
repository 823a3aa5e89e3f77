"""`fibmoe agent`: the iterative agent. Each step shows the model the best kernel so far, its evaluation
and what went wrong last time; takes a whole new kernel or SEARCH/REPLACE edits back; applies them; checks
the contest's rules statically; evaluates (the quick filter, then the full evaluation repeated); keeps the
best verified kernel. A reply that cannot be applied, a rejected or failing candidate, a hang killed at the
limit: each is one step's verdict, which the model reads next turn.

Step 0 is the start (a rung, a variant folder, a kernel file, or nothing: `scratch`), evaluated like any
candidate, so the gain over it is measured the same way.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import evaluate as evaluate_mod
from .. import reference
from ..errors import FibmoeError
from ..processes import interruptible
from . import candidate as cand
from . import prompting, sandbox
from .llm import LLM, LLMConfig, LLMError, Usage
from .runs import Display, Run, gain, reopen, total_usage

SCRATCH = "scratch"
START_ID = "c0000"  # the start's candidate folder, written when the run is created
SCRATCH_ENTRY = "kernel.py"
HISTORY = 6  # attempts shown in the prompt
ERROR_CHARS = 3000


@dataclass
class AgentConfig:
    start: str = "r3-triton-fp8"  # a variant name or folder, a kernel .py file, or "scratch"
    steps: int = 10
    llm: LLMConfig = field(default_factory=LLMConfig)
    eval: sandbox.EvalOptions = field(default_factory=sandbox.EvalOptions)
    prompts_dir: str | None = None

    def to_dict(self) -> dict:
        return {
            "start": self.start,
            "steps": self.steps,
            "llm": self.llm.to_dict(),
            "eval": self.eval.to_dict(),
            "prompts_dir": self.prompts_dir,
        }

    @classmethod
    def from_dict(cls, d: dict) -> AgentConfig:
        return cls(
            start=d["start"],
            steps=d["steps"],
            llm=LLMConfig.from_dict(d["llm"]),
            eval=sandbox.EvalOptions.from_dict(d["eval"]),
            prompts_dir=d.get("prompts_dir"),
        )


def start_candidate(start: str) -> cand.Candidate | None:
    """The starting kernel's sources (a variant or a lone kernel file), or None from scratch."""
    if start == SCRATCH:
        return None
    import tempfile

    from ..variants import REPO_ROOT

    if start.endswith(".py") and not Path(start).exists() and (REPO_ROOT / start).is_file():
        start = str(REPO_ROOT / start)  # the shipped example, from anywhere
    with tempfile.TemporaryDirectory(prefix="fibmoe-start-") as tmp:
        v = evaluate_mod.load_candidate(start, Path(tmp))
        return cand.from_variant(v)


class Agent:
    def __init__(self, run: Run, config: AgentConfig, llm: LLM | None = None, display: Display | None = None):
        self.run = run
        self.config = config
        self.llm = llm or LLM(config.llm)
        self.evaluator = sandbox.Evaluator(config.eval, run.lock_dir)
        self.display = display or Display(run, config.steps)
        self.entries = run.lineage()

    # ---- state, rebuilt from the lineage (so a resumed run picks up where it stopped) ---------------

    def _done(self, step: int) -> dict | None:
        return next((e for e in self.entries if e["step"] == step), None)

    def _best(self) -> dict | None:
        promoted = [e for e in self.entries if e.get("promoted")]
        return promoted[-1] if promoted else None

    def _start_score(self) -> float | None:
        first = self._done(0)
        return first.get("score") if first else None

    def _base(self) -> tuple[str | None, cand.Candidate | None]:
        """What the next step edits: the best verified kernel, else the latest candidate that exists
        (so a first draft from scratch can be fixed by edits), else nothing."""
        best = self._best()
        if best:
            return best["id"], cand.load_folder(self.run.candidate_dir(best["id"]))
        for e in reversed(self.entries):
            if self.run.candidate_dir(e["id"]).joinpath("variant.toml").is_file():
                return e["id"], cand.load_folder(self.run.candidate_dir(e["id"]))
        return None, None

    # ---- the loop -----------------------------------------------------------------------------------

    def run_loop(self) -> dict:
        t0 = time.monotonic()
        with self.display:
            self._refresh("resuming" if self.entries else "starting", log=bool(self.entries))
            if self._done(0) is None:
                self._step_zero()
            for step in range(1, self.config.steps + 1):
                if self._done(step) is None:
                    self._step(step)
            self._refresh("done", log=True)
        return self.write_summary(time.monotonic() - t0)

    def _step_zero(self) -> None:
        cid = START_ID
        folder = self.run.candidate_dir(cid)
        if not (folder / "variant.toml").is_file():  # from scratch: nothing to evaluate yet
            self._finish({"id": cid, "parent": None, "step": 0, "status": "scratch", "score": None})
            return
        problems = cand.static_problems(cand.load_folder(folder))
        if problems:  # said, not enforced: the start is the user's own kernel
            self.display.update(log=True, doing=f"note: the start breaks a static rule: {problems[0]}")
        self._refresh("evaluating the start", step=0)
        verdict = self.evaluator.verdict(folder, quick_first=False)
        entry = {"id": cid, "parent": None, "step": 0, **_verdict_fields(verdict)}
        self._finish(entry)

    def _step(self, step: int) -> None:
        cid = f"c{step:04d}"
        folder = self.run.candidate_dir(cid)
        parent_id, base = self._base()
        usage = Usage()
        reply_path = folder / "reply.md"
        if reply_path.is_file():  # resumed: the model already answered this step
            reply = reply_path.read_text()
            usage = Usage.from_dict(json.loads((folder / "usage.json").read_text()))
        else:
            self._refresh("asking the model", step=step)
            system, user = self.prompt(step, base, parent_id)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "prompt.md").write_text(f"# system\n\n{system}\n\n# user\n\n{user}\n")
            try:
                answer = self.llm.complete(system, user)
            except LLMError as e:
                if e.fatal:
                    raise  # no step can succeed: stop with the one line
                self._finish({"id": cid, "parent": parent_id, "step": step, "status": sandbox.LLM_ERROR,
                              "score": None, "error": str(e)})  # fmt: skip
                return
            reply, usage = answer.text, answer.usage
            (folder / "usage.json").write_text(json.dumps(usage.to_dict()))
            reply_path.write_text(reply)
        entry = {"id": cid, "parent": parent_id, "step": step, "tokens": usage.to_dict()}
        try:
            new = cand.apply_reply(base, reply) if base else _scratch_reply(reply)
        except cand.CandidateError as e:
            self._finish({**entry, "status": sandbox.BAD_REPLY, "score": None, "error": str(e)})
            return
        new.write(folder, self._name(cid), f"fibmoe agent {self.run.name} step {step}")
        problems = cand.static_problems(new)
        if problems:
            error = "static checks refused it:\n" + "\n".join(problems)
            self._finish({**entry, "status": sandbox.REJECTED, "score": None, "error": error})
            return
        verdict = self.evaluator.verdict(folder, on_stage=lambda s: self._refresh(f"evaluating {cid} ({s})"))
        self._finish({**entry, **_verdict_fields(verdict)})

    def _finish(self, entry: dict) -> None:
        best = self._best()
        if entry.get("status") == sandbox.VERIFIED and self.config.eval.beats(entry["score"], best and best["score"]):
            entry["promoted"] = True
            desc = f"found by fibmoe agent run {self.run.name}"
            self.run.promote(entry["id"], entry["score"], desc)
        if entry.get("error"):
            entry["error"] = entry["error"][-ERROR_CHARS:]
        self.run.record(entry)
        self.entries.append(entry)
        verdict_text = entry["status"] + (f" {entry['score']:.4g}" if entry.get("score") is not None else "")
        if entry.get("promoted"):
            verdict_text += " (promoted)"
        self._refresh("next", log=True, last=f"{entry['id']} {verdict_text}")
        self.write_summary()

    # ---- prompts -------------------------------------------------------------------------------------

    def prompt(self, step: int, base: cand.Candidate | None, base_id: str | None) -> tuple[str, str]:
        pdir = self.config.prompts_dir
        definition = self._definition()
        system = prompting.render("system.md", pdir, definition=definition)
        if base is None:
            user = prompting.render(
                "scratch.md", pdir, entry_file=SCRATCH_ENTRY, reference=Path(reference.__file__).read_text()
            )
            user += "\n\n" + self._last_text()
            return system, user
        best = self._best()
        best_eval = self._eval_json(best["id"]) if best else None
        ncu = (best_eval or {}).get("ncu") or {}
        user = prompting.render(
            "agent.md",
            pdir,
            step=step,
            steps=self.config.steps,
            best_id=base_id,
            best_score="none verified yet" if not best else f"{best['score']:.4g}",
            entry=f"{base.entry_file}::{base.entry}",
            files="\n\n".join(f"FILE: {n}\n```python\n{t}\n```" for n, t in sorted(base.files.items())),
            best_eval=eval_lines(best_eval) if best_eval else "(no verified evaluation yet)",
            ncu=f"\nNsight Compute on the hottest kernel: {ncu['reading']}\n" if ncu.get("reading") else "",
            history=self._history_text(),
            last=self._last_text(),
        )
        return system, user

    def _definition(self) -> str:
        d = self.config.eval.definition
        return {"small": "small: 64 experts, 16 local, H=256, I=128", "auto": "contest, or small on a CPU"}.get(
            d, "moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048"
        )

    def _history_text(self) -> str:
        lines = []
        for e in self.entries[-HISTORY:]:
            score = f" score {e['score']:.4g}" if e.get("score") is not None else ""
            why = (e.get("error") or "").strip().splitlines()
            lines.append(f"- {e['id']} (step {e['step']}): {e['status']}{score}{': ' + why[0][:160] if why else ''}")
        return "\n".join(lines) or "(none yet)"

    def _last_text(self) -> str:
        last = self.entries[-1] if self.entries else None
        if not last or not last.get("error"):
            return ""
        return (
            f"What went wrong with the last candidate ({last['id']}, {last['status']}):\n```\n"
            f"{last['error'][-ERROR_CHARS:]}\n```\n"
        )

    def _eval_json(self, cid: str) -> dict | None:
        path = self.run.candidate_dir(cid) / "eval-full-1.json"
        return json.loads(path.read_text()) if path.is_file() else None

    # ---- bookkeeping ---------------------------------------------------------------------------------

    def _name(self, cid: str) -> str:
        return f"{self.run.name.lower()}-{cid}"

    def _refresh(self, doing: str, log: bool = False, **state) -> None:
        best = self._best()
        self.display.update(
            log=log,
            doing=doing,
            best=best["score"] if best else None,
            start=self._start_score(),
            usage=total_usage(self.entries),
            **state,
        )

    def write_summary(self, wall_s: float | None = None) -> dict:
        best = self._best()
        start = self._done(0)
        statuses: dict[str, int] = {}
        for e in self.entries:
            statuses[e["status"]] = statuses.get(e["status"], 0) + 1
        summary = {
            "run": self.run.name,
            "folder": str(self.run.folder),
            "mode": "agent",
            "start": {"from": self.config.start, "score": start.get("score") if start else None},
            "best": {"id": best["id"], "score": best["score"], "variant": str(self.run.folder / "best")}
            if best
            else None,
            "gain_over_start": gain(start.get("score") if start else None, best["score"] if best else None),
            "steps_done": max((e["step"] for e in self.entries), default=-1),
            "steps": self.config.steps,
            "statuses": statuses,
            "usage": total_usage(self.entries).to_dict(),
            "eval_seconds": round(sum(e.get("eval_s") or 0 for e in self.entries), 1),
            "model": f"{self.config.llm.provider}:{self.config.llm.model}",
        }
        if wall_s is not None:
            summary["wall_s_this_session"] = round(wall_s, 1)
        self.run.write_summary(summary)
        return summary


def _scratch_reply(reply: str) -> cand.Candidate:
    """From scratch, the reply must hold the whole entry file."""
    empty = cand.Candidate(files={SCRATCH_ENTRY: ""}, entry_file=SCRATCH_ENTRY)
    return cand.apply_reply(empty, reply)


def _verdict_fields(v: dict) -> dict:
    return {
        "status": v["status"],
        "score": v["score"],
        "scores": v["scores"],
        "error": v["error"] if v["status"] != sandbox.VERIFIED else None,
        "eval_s": v["eval_s"],
    }


def eval_lines(res: dict) -> str:
    """The eval JSON, one short line per workload, for a prompt."""
    lines = [
        f"combined_score {res.get('combined_score')}, {res.get('passed')}/{res.get('workloads')} passed, "
        f"max rel L2 error {res.get('max_rel_l2_error')}"
    ]
    for r in res.get("per_workload") or []:
        frac = r.get("fraction_of_floor")
        lines.append(
            f"T={r['seq_len']} {r['status']} latency_ms={r.get('latency_ms')} x_ref={r.get('speedup_vs_reference')} "
            f"of_floor={'-' if frac is None else f'{frac:.0%}'} rel_l2={r.get('rel_l2_error')} {r.get('message', '')}"
        )
    return "\n".join(lines)


def agent(config: AgentConfig | None = None, resume: Path | None = None, runs_dir: Path | None = None, **kw) -> dict:
    """Start a run (or resume one) and carry it to the end; returns the summary."""
    interruptible()
    if resume:
        run, config = reopen(resume, "agent", AgentConfig.from_dict, config, "steps")
    else:
        if config is None:
            raise FibmoeError("no configuration for a new agent run")
        start = start_candidate(config.start)  # a bad --from or a missing key: one line, before any folder
        LLM(config.llm).check_ready()
        run = Run.create("agent", {"agent": config.to_dict()}, runs_dir)
        if start is not None:  # kept now: a resumed run starts from these sources, whatever happens to --from
            start.write(run.candidate_dir(START_ID), f"{run.name.lower()}-{START_ID}", f"the start: {config.start}")
    try:
        return Agent(run, config, **kw).run_loop()
    except KeyboardInterrupt:
        print(f"interrupted; everything done so far is in {run.folder}; continue with: "
              f"fibmoe agent --resume {run.folder}", file=sys.stderr)  # fmt: skip
        raise
