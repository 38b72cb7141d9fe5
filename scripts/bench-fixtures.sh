#!/usr/bin/env bash
# Times every bundled fixture, whole model, on its bundled input: fff (fffrun --bench) and, where the
# Python package onnxruntime is installed and ../shared/peers/ort.py exists, ONNX Runtime on the same ONNX
# file and shapes. Prints a Markdown table. Usage: scripts/bench-fixtures.sh [THREADS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-1}
runs=${2:-200}
cargo build --release -q --bins
out=$(mktemp -d)
ort=../shared/peers/ort.py
have_ort=0
if [ -f "$ort" ] && python3 -c "import onnxruntime" 2>/dev/null; then have_ort=1; fi
echo "| model | input shape | fff median ms | ONNX Runtime median ms |"
echo "| --- | --- | --- | --- |"
for onnx in models/fixtures/*.onnx; do
  name=$(basename "$onnx" .onnx)
  input=models/fixtures/$name.input.json
  if ! ./target/release/fffc compile "$onnx" -o "$out/$name.fff" 2>/dev/null; then
    echo "| $name | | n/a (fffc refused it) | |"
    continue
  fi
  fff=$(./target/release/fffrun "$out/$name.fff" "$input" --bench --runs "$runs" --threads "$threads" |
        python3 -c "import json,sys; print('%.3f' % json.load(sys.stdin)['median_ms'])")
  shapes=$(python3 -c "
import json,sys
d=json.load(open('$input'))
def shape(v):
    s=[]
    while isinstance(v,list): s.append(len(v)); v=v[0]
    return s
print(' '.join('--shape %s=%s' % (k,'x'.join(map(str,shape(v)))) for k,v in d.items()))")
  shape_text=$(echo "$shapes" | sed 's/--shape //g')
  ortms="n/a"
  if [ "$have_ort" = 1 ] && [ "$name" != fff-layer-customop ]; then
    # Token ids below 2 keep token-type ids in range; values do not change the timing.
    # shellcheck disable=SC2086
    ortms=$(python3 "$ort" bench "$onnx" $shapes --threads "$threads" --runs "$runs" --vocab 2 |
            python3 -c "import json,sys; print('%.3f' % json.load(sys.stdin)['median_ms'])")
  fi
  echo "| $name | $shape_text | $fff | $ortms |"
done
rm -rf "$out"
