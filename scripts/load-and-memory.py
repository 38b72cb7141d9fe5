#!/usr/bin/env python3
"""Load time and peak resident memory of the encoders built by bench-encoder.sh: fff (`fffrun --bench`,
which reports its load time; peak RSS of the process) against ONNX Runtime (session creation time; peak
RSS of a Python process that imports onnxruntime, creates the session and runs once). Batch 1, 1 thread.
The f32 plans against the ONNX files they were compiled from; the int8 plans, where present, against
ONNX Runtime's int8 files; the bf16 plan alone. fffrun from env FFF_BIN (a directory), else target/release.
Usage: load-and-memory.py OUT_DIR HAVE_ORT"""
import json
import os
import subprocess
import sys

out, have_ort = sys.argv[1], sys.argv[2] == "1"
ORT = """
import json, resource, sys, time
import numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
t = time.perf_counter()
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
load = (time.perf_counter() - t) * 1e3
d = json.load(open(sys.argv[2]))
s.run(None, {k: np.array(v, dtype=np.int64) for k, v in d.items()})
print(json.dumps({"load_ms": load, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def child(cmd):
    """Runs cmd; its stdout and its peak resident set in KiB."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    text = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit(f"{cmd[0]} failed")
    return text, usage.ru_maxrss


FFFRUN = os.path.join(os.environ.get("FFF_BIN") or "target/release", "fffrun")
# (row, fff plan, ONNX Runtime's counterpart or None), in OUT_DIR
MODELS = [("fff-1x11", "fff-1x11.fff", "fff-1x11.onnx"), ("dense-3072", "dense-3072.fff", "dense-3072.onnx"),
          ("fff-1x11 int8", "fff-1x11-int8.fff", "fff-1x11-ort-int8.onnx"),
          ("dense-3072 int8", "dense-3072-int8.fff", "dense-3072-ort-int8.onnx"),
          ("fff-1x11 bf16", "fff-1x11-bf16.fff", None)]

print("| model | fff load ms | ORT session ms | load speed-up | fff peak MiB | ORT peak MiB |")
print("| --- | --- | --- | --- | --- | --- |")
for name, plan, onnx in MODELS:
    have_plan = os.path.exists(f"{out}/{plan}")
    have_onnx = have_ort and onnx is not None and os.path.exists(f"{out}/{onnx}")
    if not (have_plan or have_onnx):
        continue
    inp = f"{out}/in-1.json"
    fff_load = fff_peak = ort_load = ort_peak = speed = "n/a"
    if have_plan:
        loads, peaks = [], []
        for _ in range(5):
            text, peak = child([FFFRUN, f"{out}/{plan}", inp, "--bench", "--runs", "1", "--threads", "1"])
            loads.append(json.loads(text)["load_ms"])
            peaks.append(peak)
        fff_load, fff_peak = sorted(loads)[2], max(peaks) / 1024
    if have_onnx:
        runs = [json.loads(child([sys.executable, "-c", ORT, f"{out}/{onnx}", inp])[0]) for _ in range(3)]
        ort_load = sorted(r["load_ms"] for r in runs)[1]
        ort_peak = max(r["peak_kib"] for r in runs) / 1024
        if have_plan:
            speed = f"{ort_load / fff_load:.0f}x"
        ort_load, ort_peak = f"{ort_load:.1f}", f"{ort_peak:.0f}"
    if have_plan:
        fff_load, fff_peak = f"{fff_load:.2f}", f"{fff_peak:.0f}"
    print(f"| {name} | {fff_load} | {ort_load} | {speed} | {fff_peak} | {ort_peak} |")
