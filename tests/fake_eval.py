"""A stand-in for `python -m fibmoe eval FOLDER --json [--quick] ...` that answers at once, for tests of
the loops' logic (the end-to-end tests use the real evaluator). It reads markers in the entry file:
    FAKE_HANG        sleeps until killed (the loop's time limit must kill it); FAKE_HANG_FULL: in full runs only
    FAKE_FAIL        the check fails on one workload (exit 1, as the evaluator does)
    FAKE_FLAKY       fails every second full run (the repeats disagree)
    FAKE_SCORE=<x>   the combined score (default 1.0)
and appends one line per call to $FAKE_EVAL_LOG (what ran, for the test to count)."""

import json
import os
import re
import sys
import time
from pathlib import Path

import tomllib

folder = Path(sys.argv[1])
quick = "--quick" in sys.argv
spec = tomllib.loads((folder / "variant.toml").read_text())
text = (folder / spec["entry_point"].split("::")[0]).read_text()
log = os.environ.get("FAKE_EVAL_LOG")
if log:
    with open(log, "a") as fh:
        fh.write(json.dumps({"folder": folder.name, "quick": quick, "args": sys.argv[2:], "pid": os.getpid()}) + "\n")
if "FAKE_HANG" in text and ("FAKE_HANG_FULL" not in text or not quick):
    time.sleep(3600)
m = re.search(r"FAKE_SCORE=([0-9.]+)", text)
score = float(m.group(1)) if m else 1.0
failed = "FAKE_FAIL" in text
if "FAKE_FLAKY" in text and not quick:
    n = len(list(folder.glob("eval-full-*.json")))
    failed = n % 2 == 1
rows = [
    {
        "uuid": f"u{t}",
        "seq_len": t,
        "status": "INCORRECT_NUMERICAL" if failed and t == 7 else "PASSED",
        "latency_ms": 1.0,
        "speedup_vs_reference": score,
        "fraction_of_floor": None,
        "rel_l2_error": 0.002,
        "message": "matched ratio 0.5 < 0.9" if failed and t == 7 else "",
    }
    for t in ([1, 7] if quick else [1, 7, 64])
]
res = {
    "combined_score": 0.0 if failed else score,
    "passed": sum(r["status"] == "PASSED" for r in rows),
    "workloads": len(rows),
    "all_passed": not failed,
    "stage": "check" if failed else "done",
    "error": "INCORRECT_NUMERICAL on workload u7 (T=7): matched ratio 0.5 < 0.9" if failed else None,
    "candidate": spec["name"],
    "mode": "quick" if quick else "full",
    "per_workload": rows,
    "mean_speedup_vs_reference": None if failed else score,
    "max_rel_l2_error": 0.002,
}
print(json.dumps(res))
sys.exit(1 if failed else 0)
