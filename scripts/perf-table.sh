#!/usr/bin/env bash
# Prints the current-results table of docs/PERFORMANCE.md for this machine: a line naming the CPU and
# the run, then one Markdown table. Runs scripts/bench-layer.sh and scripts/bench-encoder.sh (and
# scripts/bench-hf.sh where torch and transformers are installed or its export is already in
# bench-out/hf/), ROUNDS times each, alternating them, and gives each cell as the median over the rounds.
# A few minutes a round on a 2-core machine (by the run counts; a round with ROWS=1,128 THREADS=1
# BATCHES=1 RUNS=2 took 42 s on a shared Zen 4). ONNX Runtime's columns need `pip install onnxruntime
# numpy` and ../shared/peers/ort.py; without them they read n/a.
# Usage: scripts/perf-table.sh
#   env ROUNDS=N      rounds of every benchmark (default 1); more rounds, steadier medians
#       RUNS=N        timed runs per encoder cell (default 10)
#       HF=0|1        leave out or force the Hugging Face BERT-base rows (default: when available)
#       ROWS, THREADS, BATCHES   narrow the runs for a quick check (defaults 1,128,2048,16384; 1,2;
#                     1,8); the table's cells that were not run read n/a
# The benchmarks' own tables are kept in bench-out/perf-table/.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-1}
runs=${RUNS:-10}
rows=${ROWS:-1,128,2048,16384}
threads=${THREADS:-1,2}
batches=${BATCHES:-1,8}
hf=${HF:-auto}
if [ "$hf" = auto ]; then
  hf=0
  if [ -f bench-out/hf/bert-base.onnx ] || python3 -c "import torch, transformers" 2>/dev/null; then hf=1; fi
fi
out=bench-out/perf-table
mkdir -p "$out"
rm -f "$out"/*.md
start=$(date +%s)
cargo build --release -q --bins
layer=() encoder=() hfs=()
for r in $(seq "$rounds"); do
  scripts/bench-layer.sh "$rows" "$threads" > "$out/layer-$r.md"
  layer+=("$out/layer-$r.md")
  scripts/bench-encoder.sh "$batches" "$threads" "$runs" > "$out/encoder-$r.md"
  encoder+=("$out/encoder-$r.md")
  if [ "$hf" = 1 ]; then
    scripts/bench-hf.sh "$batches" "$threads" "$runs" > "$out/hf-$r.md"
    hfs+=("$out/hf-$r.md")
  fi
done
join() { local IFS=,; echo "$*"; }
ort=$(python3 -c "import onnxruntime; print('ONNX Runtime', onnxruntime.__version__)" 2>/dev/null || echo "no ONNX Runtime")
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "no git")
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (modified)" || true)
echo "$(python3 scripts/perf_table.py cpu)."
echo "$(date -u +%Y-%m-%d), commit $commit$dirty, $(rustc --version | cut -d' ' -f1-2), $ort;" \
  "ROUNDS=$rounds RUNS=$runs ROWS=$rows THREADS=$threads BATCHES=$batches HF=$hf."
echo
python3 scripts/perf_table.py table "$(join "${layer[@]}")" "$(join "${encoder[@]}")" \
  ${hfs[@]+"$(join "${hfs[@]}")"}
echo "perf-table.sh: $(( $(date +%s) - start )) s" >&2
