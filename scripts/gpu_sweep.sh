#!/usr/bin/env bash
# One device call: `check` (19 workloads x 3 trials) and `bench` of the given variants with the reference,
# with OFFICIAL=V also `bench --official V`, then the GPU-only tests. Each step has a time limit (seconds:
# CHECK_S, BENCH_S, OFFICIAL_S, TESTS_S) so that the call fits the session's device time, in the order
# of what matters most if it runs short. STEPS picks the steps (default "check bench official tests"):
# for rungs 3 and 4 on the H200 check takes 120-135 s, bench 135-160, official 150-250 (one run: 247) and
# tests 90-105: over a call's 600 s limit together, so a sweep is two calls:
#   STEPS="check bench" bash scripts/gpu_sweep.sh r3-triton-fp8 r4-fused-persistent
#   STEPS="official tests" OFFICIAL=r4-fused-persistent bash scripts/gpu_sweep.sh
# Usage (device tool, carry .whl): [OFFICIAL=r4-fused-persistent] bash scripts/gpu_sweep.sh VARIANT...
# Everything lands in $OUT/res (tarred into $OUT/results.tgz after each step) and $OUT/*.txt.
set -uo pipefail
. scripts/device_env.sh || exit 1
: "${FIBMOE_GIT_REVISION:?pass the commit (git rev-parse --short HEAD, run locally): the device copy has no .git}"
R="$OUT/res"
mkdir -p "$R"
pack() { tar czf "$OUT/results.tgz" -C "$R" . ; }
step() {
  local name=$1 limit=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; echo "$name rc=$? $((SECONDS - t0))s" | tee -a "$OUT/steps.txt"; pack
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python3 -c 'import torch,triton;print("torch",torch.__version__,"triton",triton.__version__)'; } > "$R/env.txt" 2>&1
STEPS=" ${STEPS:-check bench official tests} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
want check && step check "${CHECK_S:-400}" python3 -m fibmoe check "$@" --definition contest --trials 3 --results-dir "$R"
want bench && step bench "${BENCH_S:-400}" python3 -m fibmoe bench "$@" --definition contest --results-dir "$R"
if want official && [ -n "${OFFICIAL:-}" ]; then
  step official "${OFFICIAL_S:-300}" python3 -m fibmoe bench --official "$OFFICIAL" --definition contest --results-dir "$R"
fi
want tests && step gpu_tests "${TESTS_S:-300}" python3 -m pytest -q -p no:cacheprovider tests/gpu
cat "$OUT/steps.txt"; for f in check:5 bench:32 official:6 gpu_tests:4; do
  if [ -f "$OUT/${f%%:*}.txt" ]; then tail -"${f##*:}" "$OUT/${f%%:*}.txt"; fi
done
