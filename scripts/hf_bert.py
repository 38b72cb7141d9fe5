#!/usr/bin/env python3
"""A Hugging Face BERT as users export it, for `scripts/bench-hf.sh`.

  hf_bert.py export OUT.onnx [--layers N]      random BertModel (bert-base-uncased's config), TorchScript
                                               export at opset 17, attention as transformers exports it
                                               by default, dynamic batch and sequence
  hf_bert.py input OUT.json BATCH SEQ          token ids, an all-ones mask, token types 0
  hf_bert.py ort MODEL.onnx BATCH SEQ THREADS RUNS
                                               ONNX Runtime's median ms on that input, one JSON line

Needs torch and transformers to export, onnxruntime and numpy to time.
"""
import json
import statistics
import sys
import time


def export(out, layers):
    import torch
    import transformers as hf

    torch.manual_seed(0)
    config = hf.BertConfig(num_hidden_layers=layers)
    model = hf.BertModel(config).eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]

    class Outputs(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask, types):
            o = self.m(input_ids=ids, attention_mask=mask, token_type_ids=types)
            return o.last_hidden_state, o.pooler_output

    args = tuple(inputs(1, 16).values())
    torch.onnx.export(Outputs(model), tuple(torch.tensor(a) for a in args), out, input_names=names,
                      output_names=["last_hidden_state", "pooler_output"], opset_version=17,
                      dynamo=False, dynamic_axes={n: {0: "batch", 1: "seq"} for n in names})


def inputs(batch, seq):
    import random

    random.seed(0)
    return {
        "input_ids": [[random.randrange(30522) for _ in range(seq)] for _ in range(batch)],
        "attention_mask": [[1] * seq for _ in range(batch)],
        "token_type_ids": [[0] * seq for _ in range(batch)],
    }


def ort_median(model, batch, seq, threads, runs):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    feeds = {k: np.array(v, dtype=np.int64) for k, v in inputs(batch, seq).items()}
    for _ in range(3):
        s.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        s.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"median_ms": statistics.median(times), "min_ms": min(times), "runs": runs,
                      "threads": threads}))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "export":
        layers = int(args[args.index("--layers") + 1]) if "--layers" in args else 12
        export(args[0], layers)
    elif cmd == "input":
        with open(args[0], "w") as f:
            json.dump(inputs(int(args[1]), int(args[2])), f)
    elif cmd == "ort":
        ort_median(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
