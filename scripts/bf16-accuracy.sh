#!/usr/bin/env bash
# The accuracy cost of `fffc compile --weights bf16` on a whole encoder: the UltraFastBERT-style encoder
# of scripts/bench-encoder.sh (FFF 1x11 layers, seeded random weights) compiled with f32 and with bf16
# weights, run on the same batch, outputs compared per token. Needs python3 with numpy.
# Usage: scripts/bf16-accuracy.sh [BATCH]        (env LAYERS, HIDDEN, HEADS, SEQ as in bench-encoder.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-8}
layers=${LAYERS:-4}
hidden=${HIDDEN:-768}
heads=${HEADS:-12}
seq=${SEQ:-128}
cargo build --release -q --bins
bin=target/release
out=bench-out/bf16
mkdir -p "$out"
$bin/fff-models encoder --layers "$layers" --hidden "$hidden" --heads "$heads" --ff fff:1x11 -o "$out/fff-1x11.onnx"
for w in f32 bf16; do
  $bin/fffc compile "$out/fff-1x11.onnx" -o "$out/fff-1x11-$w.fff" --weights "$w" 2>/dev/null
done
python3 -c "
import json, random
random.seed(0)
print(json.dumps({'input_ids': [[random.randrange(512) for _ in range($seq)] for _ in range($batch)],
                  'attention_mask': [[1] * $seq for _ in range($batch)]}))" > "$out/in.json"
for w in f32 bf16; do
  $bin/fffrun "$out/fff-1x11-$w.fff" "$out/in.json" -o "$out/out-$w.npz"
done
ls -l "$out"/fff-1x11-*.fff | awk '{print $5, $9}'
python3 - "$out" <<'PY'
import sys
import numpy as np
d = sys.argv[1]
a, b = (np.load(f"{d}/out-{w}.npz") for w in ("f32", "bf16"))
for k in a.files:
    x, y = a[k], b[k]
    per_token = np.sqrt(((x - y) ** 2).mean(-1)) / np.sqrt((x ** 2).mean(-1))
    print(f"{k}: {per_token.size} tokens; relative RMS error per token: median {np.median(per_token):.2e}, "
          f"90th percentile {np.percentile(per_token, 90):.2e}, above 0.1: {100 * (per_token > 0.1).mean():.1f}%; "
          f"max abs error {np.abs(x - y).max():.3f}")
PY
