#!/usr/bin/env bash
# Times builds of fffrun against each other on one model and input, each in turn, ROUNDS rounds, so
# that all of them see the same spells of a shared machine (a figure from runs minutes apart can be off
# by 10-50%). Prints each build's per-round medians, sorted; quote the middle one.
# Usage: scripts/alternate.sh MODEL.fff INPUT RUNS ROUNDS FFFRUN...   (THREADS=N for other than 1)
# Example, a saved build against the current one:
#   cp target/release/fffrun /tmp/fffrun-before; (change, cargo build --release)
#   scripts/alternate.sh bench-out/layer/fff-1x11.fff bench-out/layer/x-16384.npy 10 5 \
#     /tmp/fffrun-before target/release/fffrun
set -euo pipefail
[ $# -ge 5 ] || { sed -n '2,9p' "$0" >&2; exit 2; }
model=$1 input=$2 runs=$3 rounds=$4
shift 4
declare -A times
for _ in $(seq "$rounds"); do
  for bin in "$@"; do
    t=$("$bin" "$model" "$input" --bench --runs "$runs" --threads "${THREADS:-1}" |
      python3 -c "import json,sys; print('%.5g' % json.load(sys.stdin)['median_ms'])")
    times[$bin]="${times[$bin]:-} $t"
  done
done
for bin in "$@"; do
  echo "$bin:$(echo ${times[$bin]} | tr ' ' '\n' | sort -g | tr '\n' ' ')"
done
