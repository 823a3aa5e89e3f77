#!/usr/bin/env bash
# A/B of this tree against another copy of the repository (BASE: a folder in the tree, git-ignored and
# carried to the device), interleaved so that drift of the machine hits both: ROUNDS rounds, each runs
# every named command in BASE, then here. A command is a string run by bash from the tree's root; logs
# land in $OUT/ab/<round>-<base|head>-<command number>.log and the step times in $OUT/ab/steps.txt.
# Make BASE without the bundled workloads (the device tool carries 64 MiB at most; they are copied in
# here): mkdir ab_base && git archive REV | tar -x -C ab_base && rm -r ab_base/{results,workloads}, and
# list /ab_base/ in .git/info/exclude.
# Usage (device tool, carry .whl and BASE):
#   BASE=ab_base ROUNDS=2 bash scripts/gpu_ab.sh "python3 scripts/r4_tiles_sweep.py --T 1,7" ...
set -uo pipefail
. scripts/device_env.sh || exit 1
: "${BASE:?name the base tree (a folder carried beside this one)}"
[ -e "$BASE/workloads" ] || cp -r workloads "$BASE/"
A="$OUT/ab"
mkdir -p "$A"
HERE=$PWD
for i in $(seq "${ROUNDS:-2}"); do
  n=0
  for cmd in "$@"; do
    n=$((n + 1))
    for side in base head; do
      dir=$([ $side = base ] && echo "$HERE/$BASE" || echo "$HERE")
      t0=$SECONDS
      (cd "$dir" && PYTHONPATH=/tmp/site:$dir timeout "${LIMIT_S:-120}" bash -c "$cmd") > "$A/$i-$side-$n.log" 2>&1
      echo "$i $side $n rc=$? $((SECONDS - t0))s" | tee -a "$A/steps.txt"
    done
  done
done
