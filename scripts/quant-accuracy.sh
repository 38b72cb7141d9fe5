#!/usr/bin/env bash
# The accuracy cost of fff's reduced-precision plans on whole encoders: the two encoders of
# scripts/bench-encoder.sh (FFF 1x11 and dense 3072 feedforward layers, seeded random weights), each
# compiled as f32, `--quantize int8` and `--quantize bf16` plans (override with env FFF_INT8_FLAGS,
# FFF_BF16_FLAGS; n/a where `fffc compile --help` lists no --quantize and no override is given), and the
# FFF encoder also with `--weights bf16` (bf16 tree weights only). All run on the same batch; per output,
# the minimum and mean cosine of each token's vector and the largest absolute difference against the f32
# plan, next to the issue's targets. Where onnxruntime is installed, the f32 plans are first checked the
# same way against ONNX Runtime on the ONNX file, so the reference itself is known to be right. fffc's
# own report of each reduced-precision compile (its measured error and changed FFF paths) follows.
# Needs python3 with numpy. Binaries from env FFF_BIN (a directory), else target/release after cargo build.
# Usage: scripts/quant-accuracy.sh [BATCH]        (env LAYERS, HIDDEN, HEADS, SEQ as in bench-encoder.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-8}
# shellcheck source=scripts/bench-encoder-lib.sh
. scripts/bench-encoder-lib.sh
out=bench-out/quant-accuracy
mkdir -p "$out"
rm -f "$out"/*.fff "$out"/*.npz "$out"/*.log
quant=0
if [ -n "${FFF_INT8_FLAGS:-}${FFF_BF16_FLAGS:-}" ] || $bin/fffc compile --help | grep -q -- --quantize; then
  quant=1
fi
int8_flags=${FFF_INT8_FLAGS:---quantize int8}
bf16_flags=${FFF_BF16_FLAGS:---quantize bf16}
python3 -c "
import json, random
random.seed(0)
print(json.dumps({'input_ids': [[random.randrange(512) for _ in range($seq)] for _ in range($batch)],
                  'attention_mask': [[1] * $seq for _ in range($batch)]}))" > "$out/in.json"
# plan NAME VARIANT FLAGS...: compiles $out/NAME-VARIANT.fff and runs it on the batch; a failed compile
# is reported and leaves the plan out.
plan() {
  local name=$1 variant=$2
  shift 2
  if $bin/fffc compile "$out/$name.onnx" -o "$out/$name-$variant.fff" "$@" >"$out/$name-$variant.log" 2>&1; then
    $bin/fffrun "$out/$name-$variant.fff" "$out/in.json" -o "$out/$name-$variant.npz"
  else
    echo "fffc $* failed on $name (see $out/$name-$variant.log)" >&2
  fi
}
for ff in fff:1x11 dense:3072; do
  name=${ff/:/-}
  $bin/fff-models encoder --layers "$layers" --hidden "$hidden" --heads "$heads" --ff "$ff" \
    -o "$out/$name.onnx" >/dev/null
  plan "$name" f32
  if [ "$quant" = 1 ]; then
    # shellcheck disable=SC2086
    plan "$name" int8 $int8_flags
    # shellcheck disable=SC2086
    plan "$name" bf16 $bf16_flags
  fi
done
plan fff-1x11 bf16-weights --weights bf16
python3 - "$out" "$quant" "$int8_flags" "$bf16_flags" <<'PY'
import glob
import json
import os
import sys

import numpy as np

out, quant, int8, bf16 = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
# (encoder, plan variant, its flags, the issue's target on the minimum or mean token cosine, or None)
ROWS = [("dense-3072", "int8", int8, ("min", 0.9995)),
        ("dense-3072", "bf16", bf16, ("min", 0.999)),
        ("fff-1x11", "int8", int8, ("mean", 0.995)),
        ("fff-1x11", "bf16", bf16, ("min", 0.999)),
        ("fff-1x11", "bf16-weights", "--weights bf16", None)]


def token_stats(x, y):
    """Minimum and mean cosine of the last-axis vectors, largest absolute difference (f64)."""
    x = x.astype(np.float64).reshape(-1, x.shape[-1])
    y = y.astype(np.float64).reshape(-1, y.shape[-1])
    num = (x * y).sum(-1)
    den = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)
    return cos.min(), cos.mean(), float(np.abs(x - y).max()), len(cos)


def load(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


print("| encoder | plan | against | output | tokens | min cos | mean cos | max abs diff | target |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
try:
    import onnxruntime as ort
except ImportError:
    ort = None
if ort is not None:
    feeds = {k: np.array(v, dtype=np.int64) for k, v in json.load(open(f"{out}/in.json")).items()}
    for name in ("fff-1x11", "dense-3072"):
        s = ort.InferenceSession(f"{out}/{name}.onnx", providers=["CPUExecutionProvider"])
        got = dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds)))
        for k, ref in load(f"{out}/{name}-f32.npz").items():
            lo, mean, diff, n = token_stats(got[k], ref)
            print(f"| {name} | f32 | ORT f32 | {k} | {n} | {lo:.6f} | {mean:.6f} | {diff:.2e} | |")
for name, variant, flags, target in ROWS:
    path = f"{out}/{name}-{variant}.npz"
    if not os.path.exists(path):
        why = "fffc has no --quantize" if not quant and variant != "bf16-weights" else "no plan"
        print(f"| {name} | {flags} | f32 plan | n/a ({why}) | | | | | |")
        continue
    ref = load(f"{out}/{name}-f32.npz")
    for k, y in load(path).items():
        lo, mean, diff, n = token_stats(y, ref[k])
        verdict = ""
        if target:
            which, bound = target
            got = lo if which == "min" else mean
            verdict = f"{which} >= {bound}: {'met' if got >= bound else 'NOT met'}"
        print(f"| {name} | {flags} | f32 plan | {k} | {n} | {lo:.6f} | {mean:.6f} | {diff:.2e} | {verdict} |")
for log in sorted(glob.glob(f"{out}/*.log")):
    if log.endswith("-f32.log"):
        continue
    print(f"\nfffc's report, {os.path.basename(log)[:-4]}:\n")
    with open(log) as f:
        for line in f:
            print("    " + line.rstrip())
PY
