#!/usr/bin/env bash
# Issue 10's GPU check of `fibmoe agent`: a short run from rung 3 on the contest definition, with a scripted
# model (tests/fake_llm.py on loopback: the GPU machine has no network) whose four replies are real edits of
# rung 3's kernel, each evaluated for real by `fibmoe eval` in its own killable process group:
#   1. a kernel that hangs (time.sleep at the top of run): must be killed at the limit, with the
#      candidate's own process (--timeout 60: the start's evaluation has compiled rung 3's kernels by then,
#      and the edits leave them unchanged, so a legitimate evaluation takes ~15 s);
#   2. a kernel that is wrong (the routing weights scaled by 1.5): must fail the quick filter;
#   3. rung 3 with a comment changed: verified (3 full runs), promoted only if its lowest score beats the
#      start's by more than --min-gain (1%): timing noise alone should not promote it;
#   4. rung 3 slowed by a 0.5 ms host sleep per call: verified, never promoted.
# Device time is kept to a few minutes by evaluating 3 workloads (T = 1, 14, 56: -t) instead of 19.
# Usage (device tool, carry .whl made by scripts/fetch_wheels.sh): bash scripts/gpu_agent_demo.sh
# Leaves $OUT/agent-demo.tgz (the run folder: config, lineage, every candidate's eval JSON, best/, summary)
# and $OUT/agent-demo.txt (the agent's output); commit the summary under results/h200/.
set -uo pipefail
. scripts/device_env.sh || exit 1
python3 -c "import openai" 2>/dev/null || { echo "openai is missing: run scripts/fetch_wheels.sh here and carry .whl"; exit 1; }
D="$OUT/demo"
mkdir -p "$D"
python3 - "$D/script.json" <<'EOF'
import json, sys
from fibmoe import variants
v = variants.resolve(["r3-triton-fp8"])[0]
entry = v.spec.entry_point.split("::")[0]
text = (v.path / entry).read_text()
anchor = "    ws = _LAST[0]"  # the first line of run's body
assert text.count(anchor) == 1 and text.count("import torch\n") == 1, "rung 3 changed: update the demo's edits"
def edit(new_lines, why, sleeps=False):
    blocks = f"<<<<<<< SEARCH\n{anchor}\n=======\n{new_lines}{anchor}\n>>>>>>> REPLACE\n"
    if sleeps and "\nimport time\n" not in text:
        blocks = "<<<<<<< SEARCH\nimport torch\n=======\nimport time\n\nimport torch\n>>>>>>> REPLACE\n" + blocks
    return f"{why}\nFILE: {entry}\n{blocks}"
script = [
    {"text": edit("    time.sleep(3600)  # deliberately hangs\n", "A kernel that hangs.", sleeps=True)},
    {"text": edit("    routed_scaling_factor = routed_scaling_factor * 1.5  # deliberately wrong\n", "A wrong one.")},
    {"text": edit("    # the same kernel, one comment more\n", "A neutral change.")},
    {"text": edit("    time.sleep(0.0005)  # deliberately slower\n", "A slower one.", sleeps=True)},
]
json.dump(script, open(sys.argv[1], "w"))
EOF
python3 tests/fake_llm.py "$D/script.json" > "$D/server.txt" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null' EXIT
for _ in $(seq 50); do URL=$(head -1 "$D/server.txt" 2>/dev/null); [ -n "$URL" ] && break; sleep 0.1; done
echo "fake model at $URL"
t0=$SECONDS
python3 -m fibmoe agent --from r3-triton-fp8 --steps 4 --base-url "$URL/v1" --model scripted \
  --definition contest -t 1 -t 14 -t 56 --timeout 60 --repeats 3 --runs-dir "$D/runs" --json \
  > "$D/summary-stdout.json" 2> "$OUT/agent-demo.txt"
echo "agent rc=$? $((SECONDS - t0))s" | tee -a "$OUT/agent-demo.txt"
RUN=$(ls -d "$D"/runs/agent-* | head -1)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$RUN/gpu.txt" 2>&1
tar czf "$OUT/agent-demo.tgz" -C "$D/runs" .
cat "$RUN/summary.json"
python3 - "$RUN" <<'EOF'
import json, sys
for line in open(f"{sys.argv[1]}/lineage.jsonl"):
    e = json.loads(line)
    print(e["id"], e["status"], e.get("score"), e.get("scores"), "promoted" if e.get("promoted") else "",
          (e.get("error") or "").splitlines()[0][:100] if e.get("error") else "")
EOF
