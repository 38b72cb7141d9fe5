#!/usr/bin/env python3
"""ONNX Runtime's own int8 quantisation of an ONNX model, the peer that fff's int8 plans are measured
against: `onnxruntime.quantization.quantize_dynamic` (weights int8 at compile time, activations uint8
quantised per tensor at run time).

  scripts/ort_quantize.py IN.onnx OUT.onnx [--per-channel] [--weight-type qint8|quint8]
                          [--preprocess] [--force]

Without options this is `quantize_dynamic(IN, OUT)` with ONNX Runtime's defaults: QInt8 weights, one
scale per weight tensor, every supported operator. --preprocess runs `quant_pre_process` (shape inference
with auto_merge, and graph optimisation) first, as ONNX Runtime's documentation suggests. OUT is written only when it is
missing or older than IN (or with --force), so repeated benchmark runs time the same file.
Needs: pip install onnxruntime onnx numpy
"""
import argparse
import os
import sys
import tempfile

WEIGHT_TYPES = ("qint8", "quint8")


def quantize(src, dst, per_channel=False, weight_type="qint8", preprocess=False, force=False):
    """Writes the dynamically quantised `src` to `dst` unless `dst` is already newer than `src`.
    Returns True when it wrote the file."""
    if not force and os.path.exists(dst) and os.path.getmtime(dst) >= os.path.getmtime(src):
        return False
    # Imported here: the package pulls in onnx and is slow to import, and callers that only check
    # whether the file is fresh need neither.
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    wtype = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[weight_type]
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(dst))) as tmp:
        model = src
        if preprocess:
            model = os.path.join(tmp, "pre.onnx")
            # The symbolic shape inference gives up on PyTorch's BERT exports (their sequence
            # length flows through Shape/Gather/Concat); auto_merge lets it unify such dimensions.
            quant_pre_process(src, model, auto_merge=True)
        # Write beside the target and rename, so an interrupted run never leaves a half file that
        # the freshness check above would then take for finished.
        part = os.path.join(tmp, "out.onnx")
        quantize_dynamic(model, part, per_channel=per_channel, weight_type=wtype)
        os.replace(part, dst)
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", metavar="IN.onnx")
    p.add_argument("dst", metavar="OUT.onnx")
    p.add_argument("--per-channel", action="store_true", help="one weight scale per output channel")
    p.add_argument("--weight-type", choices=WEIGHT_TYPES, default="qint8",
                   help="integer type of the weights [default: qint8, ONNX Runtime's default]")
    p.add_argument("--preprocess", action="store_true", help="run quant_pre_process first")
    p.add_argument("--force", action="store_true", help="write OUT even when it is newer than IN")
    a = p.parse_args()
    if not os.path.exists(a.src):
        sys.exit(f"ort_quantize.py: {a.src}: no such file")
    wrote = quantize(a.src, a.dst, a.per_channel, a.weight_type, a.preprocess, a.force)
    print(f"{'wrote' if wrote else 'kept'} {a.dst}", file=sys.stderr)


if __name__ == "__main__":
    main()
