#!/usr/bin/env bash
# Whole encoders, 4 layers, hidden 768, 12 heads, sequence 128 (issue sizes; override with env LAYERS,
# HIDDEN, HEADS, SEQ): an UltraFastBERT-style encoder with FFF 1x11 layers in the exported masking form,
# and the same encoder with dense 3072-wide feedforward layers. Each runs through `fffrun --bench` and,
# where the Python package onnxruntime is installed, through ONNX Runtime on the same ONNX file, in the
# same run, at batch 1 and 8 on 1 and 2 threads. Then load time and peak resident memory of both.
# Usage: scripts/bench-encoder.sh [BATCHES] [THREADS] [RUNS]      Prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
batches=${1:-1,8}
threads_list=${2:-1,2}
runs=${3:-10}
layers=${LAYERS:-4}
hidden=${HIDDEN:-768}
heads=${HEADS:-12}
seq=${SEQ:-128}
cargo build --release -q --bins
bin=target/release
out=bench-out/encoder
mkdir -p "$out"
for ff in fff:1x11 dense:3072; do
  name=${ff/:/-}
  $bin/fff-models encoder --layers "$layers" --hidden "$hidden" --heads "$heads" --ff "$ff" -o "$out/$name.onnx"
  $bin/fffc compile "$out/$name.onnx" -o "$out/$name.fff" >/dev/null
done
# Flush the freshly written plans first: their write-back would otherwise overlap the first timings.
sync
ort=../shared/peers/ort.py
have_ort=0
if [ -f "$ort" ] && python3 -c "import onnxruntime" 2>/dev/null; then have_ort=1; fi
median() { python3 -c "import json,sys; print('%.2f' % json.load(sys.stdin)['median_ms'])"; }
ratio() { python3 -c "print('%.2fx' % ($1 / $2))"; }
input() { # token ids below 512 and an all-ones mask, [batch, seq]
  python3 -c "
import json, random
random.seed(0)
b, s = $1, $seq
print(json.dumps({'input_ids': [[random.randrange(512) for _ in range(s)] for _ in range(b)],
                  'attention_mask': [[1] * s for _ in range(b)]}))" > "$out/in-$1.json"
}
echo "| batch | threads | fff FFF ms | fff dense ms | ORT FFF (masking) ms | ORT dense ms | fff dense vs ORT dense | fff FFF vs ORT FFF | fff FFF vs ORT dense |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for b in ${batches//,/ }; do
  input "$b"
  for t in ${threads_list//,/ }; do
    fff=$($bin/fffrun "$out/fff-1x11.fff" "$out/in-$b.json" --bench --runs "$runs" --threads "$t" | median)
    dense=$($bin/fffrun "$out/dense-3072.fff" "$out/in-$b.json" --bench --runs "$runs" --threads "$t" | median)
    ort_fff=n/a; ort_dense=n/a; r1=n/a; r2=n/a; r3=n/a
    if [ "$have_ort" = 1 ]; then
      shapes="--shape input_ids=${b}x$seq --shape attention_mask=${b}x$seq"
      # shellcheck disable=SC2086
      ort_fff=$(python3 "$ort" bench "$out/fff-1x11.onnx" $shapes --threads "$t" --runs "$runs" | median)
      # shellcheck disable=SC2086
      ort_dense=$(python3 "$ort" bench "$out/dense-3072.onnx" $shapes --threads "$t" --runs "$runs" | median)
      r1=$(ratio "$ort_dense" "$dense"); r2=$(ratio "$ort_fff" "$fff"); r3=$(ratio "$ort_dense" "$fff")
    fi
    echo "| $b | $t | $fff | $dense | $ort_fff | $ort_dense | $r1 | $r2 | $r3 |"
  done
done
echo
python3 scripts/load-and-memory.py "$out" "$have_ort"
