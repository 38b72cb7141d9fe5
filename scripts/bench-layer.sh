#!/usr/bin/env bash
# One UltraFastBERT-1x11 FFF layer against a dense 768 -> 4095 -> 768 layer, whole `fffrun --bench` runs
# on inputs x [1, ROWS, 768] (the FFF layer also compiled with `--weights bf16`), and, where the Python
# package onnxruntime is installed, ONNX Runtime running
# the dense layer and the exported FFF layer (masking form) on the same shapes, in the same run.
# Usage: scripts/bench-layer.sh [ROWS,...] [THREADS,...]      Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
rows_list=${1:-1,128,2048,16384}
threads_list=${2:-1,2}
cargo build --release -q --bins
bin=target/release
out=bench-out/layer
mkdir -p "$out"
$bin/fff-models layer --width 768 --ff fff:1x11 -o "$out/fff-1x11.onnx"
$bin/fff-models layer --width 768 --ff dense:4095 -o "$out/dense-4095.onnx"
$bin/fffc compile "$out/fff-1x11.onnx" -o "$out/fff-1x11.fff" 2>/dev/null
$bin/fffc compile "$out/fff-1x11.onnx" --weights bf16 -o "$out/fff-1x11-bf16.fff" 2>/dev/null
$bin/fffc compile "$out/dense-4095.onnx" -o "$out/dense-4095.fff" 2>/dev/null
# Flush the freshly written plans first: their write-back would otherwise overlap the first timings.
sync
ort=../shared/peers/ort.py
have_ort=0
if [ -f "$ort" ] && python3 -c "import onnxruntime" 2>/dev/null; then have_ort=1; fi
# Four significant digits: a one-row call takes about 0.001 ms, whose ratios would lose 5% to four
# decimals.
median() { python3 -c "import json,sys; print('%.4g' % json.load(sys.stdin)['median_ms'])"; }
ratio() { python3 -c "print('%.1fx' % ($1 / $2))"; }
echo "| rows | threads | fff FFF 1x11 ms | fff dense 4095 ms | ORT dense 4095 ms | ORT FFF (masking) ms | vs fff dense | vs ORT dense | fff FFF bf16 ms | bf16 vs ORT dense |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for rows in ${rows_list//,/ }; do
  x="$out/x-$rows.npy"
  $bin/fff-models npy --shape "1x${rows}x768" -o "$x"
  # Many runs where one is short, so that medians of microsecond calls are stable (1000 runs of a
  # 2 µs call are 2 ms, too short for the process to settle); the dense layers take seconds at 16384
  # rows, so they get fewer.
  runs=$(( rows >= 16384 ? 3 : rows >= 2048 ? 5 : rows >= 128 ? 20 : 1000 ))
  fff_runs=$(( rows >= 16384 ? 30 : rows >= 2048 ? 30 : rows >= 128 ? 1000 : 20000 ))
  for threads in ${threads_list//,/ }; do
    # A moment for the previous process's memory to be returned, which otherwise overlaps the timing.
    sleep 1
    fff=$($bin/fffrun "$out/fff-1x11.fff" "$x" --bench --runs "$fff_runs" --threads "$threads" | median)
    bf16=$($bin/fffrun "$out/fff-1x11-bf16.fff" "$x" --bench --runs "$fff_runs" --threads "$threads" | median)
    dense=$($bin/fffrun "$out/dense-4095.fff" "$x" --bench --runs "$runs" --threads "$threads" | median)
    ort_dense=n/a; ort_fff=n/a; vs_ort=n/a; bf16_vs_ort=n/a
    if [ "$have_ort" = 1 ]; then
      ort_dense=$(python3 "$ort" bench "$out/dense-4095.onnx" --shape "x=1x${rows}x768" --threads "$threads" --runs "$runs" | median)
      ort_fff=$(python3 "$ort" bench "$out/fff-1x11.onnx" --shape "x=1x${rows}x768" --threads "$threads" --runs "$runs" | median)
      vs_ort=$(ratio "$ort_dense" "$fff")
      bf16_vs_ort=$(ratio "$ort_dense" "$bf16")
    fi
    echo "| $rows | $threads | $fff | $dense | $ort_dense | $ort_fff | $(ratio "$dense" "$fff") | $vs_ort | $bf16 | $bf16_vs_ort |"
  done
done
