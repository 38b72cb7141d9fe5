#!/usr/bin/env bash
# Whole encoders, 4 layers, hidden 768, 12 heads, sequence 128 (issue sizes; override with env LAYERS,
# HIDDEN, HEADS, SEQ): an UltraFastBERT-style encoder with FFF 1x11 layers in the exported masking form,
# and the same encoder with dense 3072-wide feedforward layers. Each runs through `fffrun --bench` in f32
# and as int8 and bf16 plans, and, where the Python package onnxruntime is installed, through ONNX Runtime
# on the same ONNX file in f32 and after ONNX Runtime's own `quantize_dynamic` (defaults; see
# scripts/ort_quantize.py), in the same run, at batch 1 and 8 on 1 and 2 threads. Then load time and peak
# resident memory of each plan and its ONNX Runtime counterpart.
# The int8 plans are compiled with `fffc compile --quantize int8`, the bf16 plan with `--quantize bf16`
# (override with env FFF_INT8_FLAGS, FFF_BF16_FLAGS); where `fffc compile --help` lists no --quantize
# and no override is given, their columns say n/a. Binaries from env FFF_BIN (a directory), else
# target/release after `cargo build --release`. Quantised plans' compile reports go to $out/*.log.
# Usage: scripts/bench-encoder.sh [BATCHES] [THREADS] [RUNS]      Prints Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
batches=${1:-1,8}
threads_list=${2:-1,2}
runs=${3:-10}
# shellcheck source=scripts/bench-encoder-lib.sh
. scripts/bench-encoder-lib.sh
export FFF_BIN=$bin
out=bench-out/encoder
mkdir -p "$out"
quant=0
if [ -n "${FFF_INT8_FLAGS:-}${FFF_BF16_FLAGS:-}" ] || $bin/fffc compile --help | grep -q -- --quantize; then
  quant=1
fi
int8_flags=${FFF_INT8_FLAGS:---quantize int8}
bf16_flags=${FFF_BF16_FLAGS:---quantize bf16}
# Plans left by an earlier run must not be timed as this run's.
rm -f "$out"/*-int8.fff "$out"/*-bf16.fff
for ff in fff:1x11 dense:3072; do
  name=${ff/:/-}
  $bin/fff-models encoder --layers "$layers" --hidden "$hidden" --heads "$heads" --ff "$ff" -o "$out/$name.onnx"
  $bin/fffc compile "$out/$name.onnx" -o "$out/$name.fff" >/dev/null
  if [ "$quant" = 1 ]; then
    # shellcheck disable=SC2086
    $bin/fffc compile "$out/$name.onnx" -o "$out/$name-int8.fff" $int8_flags >"$out/$name-int8.log" 2>&1 ||
      echo "fffc $int8_flags failed on $name (see $out/$name-int8.log)" >&2
  fi
done
if [ "$quant" = 1 ]; then
  # shellcheck disable=SC2086
  $bin/fffc compile "$out/fff-1x11.onnx" -o "$out/fff-1x11-bf16.fff" $bf16_flags >"$out/fff-1x11-bf16.log" 2>&1 ||
    echo "fffc $bf16_flags failed on fff-1x11 (see $out/fff-1x11-bf16.log)" >&2
fi
ort=../shared/peers/ort.py
have_ort=0
if [ -f "$ort" ] && python3 -c "import onnxruntime" 2>/dev/null; then have_ort=1; fi
if [ "$have_ort" = 1 ]; then
  for name in dense-3072 fff-1x11; do
    python3 scripts/ort_quantize.py "$out/$name.onnx" "$out/$name-ort-int8.onnx" 2>/dev/null
  done
fi
# Flush the freshly written plans first: their write-back would otherwise overlap the first timings.
sync
# median, ratio, fff_ms, ort_ms and input.
echo "ms per call, median of $runs runs; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo
echo "| batch | threads | fff f32 FFF | fff int8 FFF | fff bf16 FFF | fff f32 dense | fff int8 dense | ORT f32 FFF (masking) | ORT int8 FFF (masking) | ORT f32 dense | ORT int8 dense |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
ratios=()
for b in ${batches//,/ }; do
  input "$b"
  for t in ${threads_list//,/ }; do
    fff=$(fff_ms "$out/fff-1x11.fff" "$b" "$t")
    fff8=$(fff_ms "$out/fff-1x11-int8.fff" "$b" "$t")
    fff16=$(fff_ms "$out/fff-1x11-bf16.fff" "$b" "$t")
    dense=$(fff_ms "$out/dense-3072.fff" "$b" "$t")
    dense8=$(fff_ms "$out/dense-3072-int8.fff" "$b" "$t")
    ort_fff=$(ort_ms "$out/fff-1x11.onnx" "$b" "$t")
    ort_fff8=$(ort_ms "$out/fff-1x11-ort-int8.onnx" "$b" "$t")
    ort_dense=$(ort_ms "$out/dense-3072.onnx" "$b" "$t")
    ort_dense8=$(ort_ms "$out/dense-3072-ort-int8.onnx" "$b" "$t")
    echo "| $b | $t | $fff | $fff8 | $fff16 | $dense | $dense8 | $ort_fff | $ort_fff8 | $ort_dense | $ort_dense8 |"
    ratios+=("| $b | $t | $(ratio "$ort_dense8" "$dense8") | $(ratio "$ort_dense8" "$fff8") | $(ratio "$fff" "$fff16") \
| $(ratio "$ort_dense" "$dense") | $(ratio "$ort_fff" "$fff") | $(ratio "$ort_dense" "$fff") |")
  done
done
echo
echo "Speed-ups (the other's ms / this one's ms); the issue's targets in brackets, the bf16 one at batch 8, 1 thread."
echo
echo "| batch | threads | fff int8 dense vs ORT int8 dense (>= 1) | fff int8 FFF vs ORT int8 dense (>= 2) | fff bf16 FFF vs fff f32 FFF (>= 1.5) | fff f32 dense vs ORT f32 dense | fff f32 FFF vs ORT f32 FFF | fff f32 FFF vs ORT f32 dense |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${ratios[@]}"
echo
python3 scripts/load-and-memory.py "$out" "$have_ort"
