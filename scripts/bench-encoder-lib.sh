# Settings and helpers of the encoder benchmarks (bench-encoder.sh, bench-quant-import.sh,
# quant-accuracy.sh), sourced from the repository's root. It sets the encoder's size (env LAYERS, HIDDEN,
# HEADS, SEQ) and bin, the folder of the binaries (env FFF_BIN, else target/release after a release
# build). Its functions read what the scripts set before calling them: out (the work folder), runs,
# ort (../shared/peers/ort.py) and have_ort (1 where ONNX Runtime runs).
layers=${LAYERS:-4}
hidden=${HIDDEN:-768}
heads=${HEADS:-12}
seq=${SEQ:-128}
if [ -n "${FFF_BIN:-}" ]; then
  bin=$FFF_BIN
else
  cargo build --release -q --bins
  bin=target/release
fi
median() { python3 -c "import json,sys; print('%.2f' % json.load(sys.stdin)['median_ms'])"; }
# ratio SLOWER FASTER: how many times faster the second is; n/a where either is.
ratio() {
  case "$1$2" in *n/a*) echo n/a ;; *) python3 -c "print('%.2fx' % ($1 / $2))" ;; esac
}
fff_ms() { # PLAN BATCH THREADS
  if [ -f "$1" ]; then
    $bin/fffrun "$1" "$out/in-$2.json" --bench --runs "$runs" --threads "$3" | median
  else
    echo n/a
  fi
}
ort_ms() { # MODEL BATCH THREADS
  if [ "$have_ort" = 1 ] && [ -f "$1" ]; then
    python3 "$ort" bench "$1" --shape "input_ids=$2x$seq" --shape "attention_mask=$2x$seq" \
      --threads "$3" --runs "$runs" | median
  else
    echo n/a
  fi
}
input() { # token ids below 512 and an all-ones mask, [batch, seq]
  python3 -c "
import json, random
random.seed(0)
b, s = $1, $seq
print(json.dumps({'input_ids': [[random.randrange(512) for _ in range(s)] for _ in range(b)],
                  'attention_mask': [[1] * s for _ in range(b)]}))" > "$out/in-$1.json"
}
