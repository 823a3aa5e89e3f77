"""Run folders: everything a search loop did, on disk as it happens, so that a run survives anything.

    runs/<mode>-<time>/
      config.json        the options the run was started with (a resumed run reads them back)
      lineage.jsonl      one line per candidate: id, parent, step, score, status, tokens, error
      candidates/<id>/   its sources and variant.toml, the model's reply, every eval JSON
      best/              the best verified kernel as a variant folder (fibmoe check/bench/pack take it)
      summary.json       start and best score, the gain, steps, tokens, cost

Lines are appended and flushed one at a time, so an interruption (Ctrl-C, a kill) loses at most the
candidate in flight; the loops read the lineage back on `--resume` and carry on from there.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.live import Live
from rich.text import Text

from ..errors import FibmoeError
from .llm import Usage

RUNS_DIR = Path("runs")
CONFIG = "config.json"
LINEAGE = "lineage.jsonl"
SUMMARY = "summary.json"

C = TypeVar("C")  # a loop's configuration (a dataclass): AgentConfig, EvolveConfig


class Run:
    def __init__(self, folder: Path):
        self.folder = Path(folder).resolve()  # the evaluator runs from the repository root

    # ---- creation and resume ----------------------------------------------------------------------

    @classmethod
    def create(cls, mode: str, config: dict, runs_dir: Path | None = None) -> Run:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        base = Path(runs_dir or RUNS_DIR) / f"{mode}-{stamp}"
        folder, n = base, 1
        while folder.exists():
            n += 1
            folder = base.with_name(f"{base.name}-{n}")
        (folder / "candidates").mkdir(parents=True)
        run = cls(folder)
        run._write_json(CONFIG, {"mode": mode, "created": stamp, **config})
        return run

    @classmethod
    def open(cls, folder: Path, mode: str) -> Run:
        folder = Path(folder)
        if not (folder / CONFIG).is_file():
            named = (RUNS_DIR / folder) if not folder.is_absolute() else None
            if named is not None and (named / CONFIG).is_file():
                folder = named
            else:
                raise FibmoeError(f"--resume {folder}: not a run folder (no {CONFIG} in it)")
        run = cls(folder)
        if run.config.get("mode") != mode:
            raise FibmoeError(f"--resume {folder}: that is a {run.config.get('mode')} run, not a {mode} run")
        return run

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def config(self) -> dict:
        return json.loads((self.folder / CONFIG).read_text())

    def candidate_dir(self, cid: str) -> Path:
        return self.folder / "candidates" / cid

    @property
    def lock_dir(self) -> Path:
        return self.folder / ".slots"

    # ---- lineage -----------------------------------------------------------------------------------

    def record(self, entry: dict) -> None:
        """Append one lineage line (flushed and synced: it is the run's memory)."""
        with open(self.folder / LINEAGE, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def lineage(self) -> list[dict]:
        return read_jsonl(self.folder / LINEAGE)  # a line cut short by a kill: that candidate is redone

    # ---- the best kernel and the summary -----------------------------------------------------------

    def promote(self, cid: str, score: float, description: str) -> Path:
        """Copy a verified candidate to best/ as a variant folder named after the run."""
        from . import candidate

        c = candidate.load_folder(self.candidate_dir(cid))
        best = self.folder / "best"
        tmp = self.folder / ".best-new"
        if tmp.exists():
            shutil.rmtree(tmp)
        c.write(tmp, _variant_name(self.name), f"{description} (candidate {cid}, score {score:.4g})")
        for extra in ("eval-full-1.json",):
            src = self.candidate_dir(cid) / extra
            if src.is_file():
                shutil.copyfile(src, tmp / "eval.json")
        if best.exists():
            shutil.rmtree(best)
        tmp.rename(best)
        return best

    def write_summary(self, summary: dict) -> None:
        self._write_json(SUMMARY, summary)

    def summary(self) -> dict:
        path = self.folder / SUMMARY
        return json.loads(path.read_text()) if path.is_file() else {}

    def _write_json(self, name: str, data: dict) -> None:
        tmp = self.folder / f".{name}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.folder / name)


def read_jsonl(path: Path) -> list[dict]:
    """The records of an appended JSON-lines file; none if it is missing. A line that does not parse (cut
    short by a kill) is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def reopen(folder: Path, mode: str, from_dict: Callable[[dict], C], asked: C | None, budget: str) -> tuple[Run, C]:
    """Reopen a `mode` run to carry on with the configuration it was started with (config.json's `mode` key);
    its budget (the field `budget`: steps, iterations) is raised to the one `asked` gives, where that is more."""
    run = Run.open(folder, mode)
    stored = from_dict(run.config[mode])
    more = getattr(asked, budget) if asked is not None else 0
    if more:
        stored = dataclasses.replace(stored, **{budget: max(getattr(stored, budget), more)})
    return run, stored


def _variant_name(run_name: str) -> str:
    return f"{run_name.lower()}-best"


def total_usage(entries: list[dict]) -> Usage:
    total = Usage()
    for e in entries:
        total.add(Usage.from_dict(e.get("tokens")))
    return total


def gain(start: float | None, best: float | None) -> float | None:
    """The best score over the start's (x); None while either is missing or the start scored 0."""
    if not start or best is None:
        return None
    return best / start


# ---- the live display ------------------------------------------------------------------------------


class Display:
    """One status line on stderr: live where stderr is a terminal, one printed line per event elsewhere."""

    def __init__(self, run: Run, total_steps: int, console: Console | None = None):
        self.run = run
        self.total = total_steps
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.live = Live(console=self.console, auto_refresh=False) if self.console.is_terminal else None
        self.state = {"step": 0, "best": None, "start": None, "last": "-", "usage": Usage(), "doing": "starting"}

    def __enter__(self):
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live:
            self.live.__exit__(*exc)

    def update(self, log: bool = False, **state) -> None:
        self.state.update(state)
        line = self.line()
        if self.live:
            self.live.update(Text(line), refresh=True)
            if log:
                self.console.print(line, highlight=False)
        elif log:
            print(line, file=sys.stderr, flush=True)

    def line(self) -> str:
        s = self.state
        best = "-" if s["best"] is None else f"{s['best']:.4g}"
        g = gain(s["start"], s["best"])
        gain_text = f" ({g:.3f}x the start)" if g else ""
        u: Usage = s["usage"]
        cost = "" if u.cost_usd is None else f", ${u.cost_usd:.4f}"
        return (
            f"{self.run.name} step {s['step']}/{self.total}: {s['doing']} | best {best}{gain_text} | "
            f"last: {s['last']} | tokens {u.input_tokens} in, {u.output_tokens} out{cost}"
        )
