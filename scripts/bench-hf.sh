#!/usr/bin/env bash
# A Hugging Face BERT-base as users export it (random weights, bert-base-uncased's config, transformers'
# default attention, PyTorch's TorchScript exporter at opset 17), compiled by fffc and timed by
# `fffrun --bench` and, where the Python package onnxruntime is installed, by ONNX Runtime on the same
# file and inputs, in the same run, at sequence 128 and the given batches and threads. Needs torch and
# transformers for the export (kept in bench-out/hf/ for later runs).
# Usage: scripts/bench-hf.sh [BATCHES] [THREADS] [RUNS]      Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
batches=${1:-1,8}
threads_list=${2:-1,2}
runs=${3:-10}
seq=128
cargo build --release -q --bins
bin=target/release
out=bench-out/hf
mkdir -p "$out"
if [ ! -f "$out/bert-base.onnx" ]; then
  python3 scripts/hf_bert.py export "$out/bert-base.onnx" 2>/dev/null
fi
$bin/fffc compile "$out/bert-base.onnx" -o "$out/bert-base.fff" >/dev/null 2>&1
sync
have_ort=0
if python3 -c "import onnxruntime" 2>/dev/null; then have_ort=1; fi
median() { python3 -c "import json,sys; print('%.2f' % json.load(sys.stdin)['median_ms'])"; }
echo "| batch | threads | fff ms | ORT ms | fff vs ORT |"
echo "| --- | --- | --- | --- | --- |"
for batch in ${batches//,/ }; do
  python3 scripts/hf_bert.py input "$out/in-$batch.json" "$batch" "$seq"
  for threads in ${threads_list//,/ }; do
    sleep 1
    fff=$($bin/fffrun "$out/bert-base.fff" "$out/in-$batch.json" --bench --runs "$runs" --threads "$threads" | median)
    ort=n/a; vs=n/a
    if [ "$have_ort" = 1 ]; then
      ort=$(python3 scripts/hf_bert.py ort "$out/bert-base.onnx" "$batch" "$seq" "$threads" "$runs" | median)
      vs=$(python3 -c "print('%.2fx' % ($ort / $fff))")
    fi
    echo "| $batch | $threads | $fff | $ort | $vs |"
  done
done
