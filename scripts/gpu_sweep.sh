#!/usr/bin/env bash
# One device call: environment, GPU-only tests, check and bench of the given variants on all 19
# contest workloads. Usage (device tool, carry .whl): bash scripts/gpu_sweep.sh [VARIANT...]
set -uo pipefail
. scripts/device_env.sh || exit 1
mkdir -p "$OUT"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c 'import torch,triton;print("torch",torch.__version__,"triton",triton.__version__)'; } 2>&1 | tee "$OUT/env.txt"
python3 -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/gpu_tests.txt"
python3 -m fibmoe check "$@" --definition contest --trials 3 --save --json > "$OUT/check.json" 2> "$OUT/check.log"; echo "check rc=$?" | tee -a "$OUT/check.log"
python3 -m fibmoe bench "$@" --definition contest --results-dir "$OUT/results" > "$OUT/bench.txt" 2>&1; echo "bench rc=$?" | tee -a "$OUT/bench.txt"
cp results/*/check-*.json "$OUT/" 2>/dev/null
python3 - "$OUT/check.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
for r in rows:
    print(f"{r['variant']:22s} T={r['seq_len']:6d} {r['uuid'][:8]} {r['status']:20s} relL2={r['rel_l2_error']} matched={r['matched_ratio']} routing={r['routing_agreement']}")
PY
tail -30 "$OUT/bench.txt"
