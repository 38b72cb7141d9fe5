#!/usr/bin/env bash
# Speed of an already quantised model in fff and in ONNX Runtime (issue 26): the 4-layer dense encoder of
# scripts/bench-encoder.sh (hidden 768, 12 heads, dense 3072-wide feedforward layers; override with env
# LAYERS, HIDDEN, HEADS, SEQ) quantised by ONNX Runtime's `quantize_dynamic` with its defaults (QInt8
# weights, one scale per tensor; scripts/ort_quantize.py). ONNX Runtime runs that file
# (../shared/peers/ort.py bench); fff runs the plan `fffc compile` makes of that same file, with no
# --quantize (`fffrun --bench`). Beside them, for reference, fff's own int8 plan of the f32 encoder
# (`fffc compile --quantize int8`, or env FFF_INT8_FLAGS; n/a where fffc has no --quantize). Batch 1 and 8,
# sequence 128, 1 and 2 threads; median ms of RUNS runs, all engines of a cell one after the other.
# Where fffc refuses the quantised file, its column says n/a and fffc's message is printed below.
# Needs python3 with onnxruntime, onnx and numpy. Binaries from env FFF_BIN (a directory), else
# target/release after `cargo build --release`.
# Usage: scripts/bench-quant-import.sh [BATCHES] [THREADS] [RUNS]      Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
batches=${1:-1,8}
threads_list=${2:-1,2}
runs=${3:-10}
# shellcheck source=scripts/bench-encoder-lib.sh
. scripts/bench-encoder-lib.sh
ort=../shared/peers/ort.py
if [ ! -f "$ort" ] || ! python3 -c "import onnxruntime, onnx, numpy" 2>/dev/null; then
  echo "bench-quant-import.sh: needs $ort and the Python packages onnxruntime, onnx, numpy" >&2
  exit 1
fi
out=bench-out/quant-import
mkdir -p "$out"
# The name quant-import.py --make gives the same encoder at the default sizes.
name=dense-3072
[ "$layers-$hidden-$heads" = 4-768-12 ] || name=dense-3072-${layers}x${hidden}x$heads
# Plans left by an earlier run must not be timed as this run's.
rm -f "$out/$name-qdyn.fff" "$out/$name-int8.fff"
if [ ! -f "$out/$name.onnx" ]; then
  $bin/fff-models encoder --layers "$layers" --hidden "$hidden" --heads "$heads" --ff dense:3072 \
    -o "$out/$name.onnx" >/dev/null
fi
python3 scripts/ort_quantize.py "$out/$name.onnx" "$out/$name-qdyn.onnx" 2>/dev/null
refusal=""
if ! $bin/fffc compile "$out/$name-qdyn.onnx" -o "$out/$name-qdyn.fff" >"$out/$name-qdyn.log" 2>&1; then
  refusal=$(grep -m1 -i -A3 '^error' "$out/$name-qdyn.log" | tr '\n' ' ' || true)
  [ -n "$refusal" ] || refusal=$(tail -n 3 "$out/$name-qdyn.log" | tr '\n' ' ')
fi
int8_flags=${FFF_INT8_FLAGS:---quantize int8}
if [ -n "${FFF_INT8_FLAGS:-}" ] || $bin/fffc compile --help | grep -q -- --quantize; then
  # shellcheck disable=SC2086
  $bin/fffc compile "$out/$name.onnx" -o "$out/$name-int8.fff" $int8_flags >"$out/$name-int8.log" 2>&1 ||
    echo "fffc $int8_flags failed on $name (see $out/$name-int8.log)" >&2
fi
# Flush the freshly written plans first: their write-back would otherwise overlap the first timings.
sync
# median, ratio, fff_ms, ort_ms and input, as bench-encoder.sh times them.
have_ort=1
echo "Dense encoder ($layers layers, hidden $hidden, $heads heads, FF 3072, sequence $seq) quantised by ONNX Runtime's"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
echo "quantize_dynamic (defaults); ms per call, median of $runs runs; $cpu; load average $(cut -d' ' -f1 /proc/loadavg)"
echo
echo "| batch | threads | ORT on the quantised file | fff on the quantised file | ORT ms / fff ms | fff $int8_flags of the f32 file | ORT ms / that |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for b in ${batches//,/ }; do
  input "$b"
  for t in ${threads_list//,/ }; do
    ort_q=$(ort_ms "$out/$name-qdyn.onnx" "$b" "$t")
    fff_q=$(fff_ms "$out/$name-qdyn.fff" "$b" "$t")
    fff8=$(fff_ms "$out/$name-int8.fff" "$b" "$t")
    echo "| $b | $t | $ort_q | $fff_q | $(ratio "$ort_q" "$fff_q") | $fff8 | $(ratio "$ort_q" "$fff8") |"
  done
done
echo
echo "Load average after: $(cut -d' ' -f1 /proc/loadavg) (other work on the machine shows in the timings)."
if [ -n "$refusal" ]; then
  echo
  echo "fffc refused $out/$name-qdyn.onnx: $refusal"
fi
