#!/usr/bin/env bash
# One device call: environment, GPU-only tests, `check` (19 workloads x 3 trials) and `bench` of the
# given variants with the reference; with OFFICIAL=V also `bench --official V`.
# Usage (device tool, carry .whl): [OFFICIAL=r3-triton-fp8] bash scripts/gpu_sweep.sh VARIANT...
# Everything lands in $OUT/res (tarred into $OUT/results.tgz after each step) and $OUT/*.txt.
set -uo pipefail
. scripts/device_env.sh || exit 1
: "${FIBMOE_GIT_REVISION:?pass the commit (git rev-parse --short HEAD, run locally): the device copy has no .git}"
R="$OUT/res"
mkdir -p "$R"
pack() { tar czf "$OUT/results.tgz" -C "$R" . ; }
step() { local name=$1; shift; local t0=$SECONDS; "$@" > "$OUT/$name.txt" 2>&1; echo "$name rc=$? $((SECONDS - t0))s" | tee -a "$OUT/steps.txt"; pack; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c 'import torch,triton;print("torch",torch.__version__,"triton",triton.__version__)'; } > "$R/env.txt" 2>&1
step gpu_tests python3 -m pytest -q -p no:cacheprovider tests/gpu
step check python3 -m fibmoe check "$@" --definition contest --trials 3 --save --results-dir "$R"
step bench python3 -m fibmoe bench "$@" --definition contest --results-dir "$R"
if [ -n "${OFFICIAL:-}" ]; then step official python3 -m fibmoe bench --official "$OFFICIAL" --definition contest --results-dir "$R"; fi
cat "$OUT/steps.txt"; tail -4 "$OUT/gpu_tests.txt"; tail -28 "$OUT/bench.txt"; tail -4 "$OUT/official.txt" 2>/dev/null
