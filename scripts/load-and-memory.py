#!/usr/bin/env python3
"""Load time and peak resident memory of the encoders built by bench-encoder.sh: fff (`fffrun --bench`,
which reports its load time; peak RSS of the process) against ONNX Runtime (session creation time; peak
RSS of a Python process that imports onnxruntime, creates the session and runs once). Batch 1, 1 thread.
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


print("| model | fff load ms | ORT session ms | load speed-up | fff peak MiB | ORT peak MiB |")
print("| --- | --- | --- | --- | --- | --- |")
for name in ["fff-1x11", "dense-3072"]:
    inp = f"{out}/in-1.json"
    loads, peaks = [], []
    for _ in range(5):
        text, peak = child(["target/release/fffrun", f"{out}/{name}.fff", inp, "--bench", "--runs", "1",
                            "--threads", "1"])
        loads.append(json.loads(text)["load_ms"])
        peaks.append(peak)
    fff_load, fff_peak = sorted(loads)[2], max(peaks) / 1024
    ort_load = ort_peak = speed = "n/a"
    if have_ort:
        runs = [json.loads(child([sys.executable, "-c", ORT, f"{out}/{name}.onnx", inp])[0]) for _ in range(3)]
        ort_load = sorted(r["load_ms"] for r in runs)[1]
        ort_peak = max(r["peak_kib"] for r in runs) / 1024
        speed = f"{ort_load / fff_load:.0f}x"
        ort_load, ort_peak = f"{ort_load:.1f}", f"{ort_peak:.0f}"
    print(f"| {name} | {fff_load:.2f} | {ort_load} | {speed} | {fff_peak:.0f} | {ort_peak} |")
