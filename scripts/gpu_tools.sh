#!/usr/bin/env bash
# One device call for the official path and the tools: bench --official, eval (--quick --ncu),
# profile, sanitize, on one variant. Usage (device tool, carry .whl): bash scripts/gpu_tools.sh VARIANT
set -uo pipefail
. scripts/device_env.sh || exit 1
: "${FIBMOE_GIT_REVISION:?pass the commit (git rev-parse --short HEAD, run locally): the device copy has no .git}"
V=${1:-r3-triton-fp8}
R="$OUT/res"
mkdir -p "$R"
pack() { tar czf "$OUT/results.tgz" -C "$R" . ; }
step() { local name=$1; shift; local t0=$SECONDS; "$@" > "$OUT/$name.txt" 2>&1; echo "$name rc=$? ${SECONDS}-${t0}s" | tee -a "$OUT/steps.txt"; pack; }
step official python3 -m fibmoe bench --official "$V" --definition contest --results-dir "$R"
step eval python3 -m fibmoe eval "$V" --json --quick --ncu --save --results-dir "$R"
step profile python3 -m fibmoe profile "$V" --workload e05c6c03 --results-dir "$R"
step sanitize python3 -m fibmoe sanitize "$V" --workload e05c6c03 --timeout 90 --results-dir "$R"
tail -25 "$OUT/official.txt"; tail -5 "$OUT/profile.txt"; tail -12 "$OUT/sanitize.txt"
