#!/usr/bin/env bash
# Issue 9's check that `fibmoe bench` and `fibmoe bench --official` measure the same thing: PAIRS rounds of
# bench then official, interleaved so that drift of the machine hits both, then scripts/agreement.py.
# Usage (device tool, carry .whl): [PAIRS=3] [LIMIT_S=90] bash scripts/gpu_agreement.sh VARIANT -t 1 -t 7 ...
# Results land in $OUT/agreement.tgz (one folder per run: nested deeper than the device tool brings back),
# the comparison in $OUT/agreement.txt.
set -uo pipefail
. scripts/device_env.sh || exit 1
: "${FIBMOE_GIT_REVISION:?pass the commit (git rev-parse --short HEAD, run locally): the device copy has no .git}"
R="$OUT/agreement"
mkdir -p "$R"
for i in $(seq "${PAIRS:-3}"); do
  for path in bench official; do
    flag=$([ $path = official ] && echo --official)
    t0=$SECONDS
    timeout "${LIMIT_S:-90}" python3 -m fibmoe bench $flag "$@" --definition contest --results-dir "$R/$i-$path" \
      > "$R/$i-$path.txt" 2>&1
    echo "$i $path rc=$? $((SECONDS - t0))s" | tee -a "$R/steps.txt"
  done
done
python3 scripts/agreement.py "$R" --json "$R/agreement.json" | tee "$OUT/agreement.txt"
tar czf "$OUT/agreement.tgz" -C "$OUT" agreement && rm -rf "$R"
