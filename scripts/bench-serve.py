#!/usr/bin/env python3
"""Throughput and latency of fffserve under concurrent clients, with dynamic batching on and off.

Starts fffserve (target/release, or env FFF_BIN, a folder) on one plan, first with batching
(--max-batch-size 8 --max-queue-delay-ms 2), then without (--max-batch-size 1), and drives it with
1, 4, 16 and 64 concurrent clients (threads, each with its own keep-alive connection, sending v2
requests with binary tensor data and asking for binary outputs) for SECONDS each, on inputs of
batch 1 x sequence SEQ (token ids below 512 from random.seed(0), an all-ones mask, zero token types:
the inputs of scripts/bench-encoder-lib.sh). Every answer's status is checked. Prints a Markdown
table: batching, clients, throughput, p50/p90/p99 latency, errors, and the mean rows per model run
and the mean time a request waited in the queue (both from the server's /metrics); then
`fffrun PLAN INPUT --bench`'s medians on the same input as 1 and as 8 rows, whose ratio bounds what
batching can gain.

Without a PLAN, the benchmark's encoder is made as scripts/bench-encoder.sh makes it: fff-models
encoder, 4 layers, hidden 768, 12 heads, FFF 1x11 (env LAYERS, HIDDEN, HEADS override), compiled
with fffc, in bench-out/serve/.

The clients run on the same machine as the server and take CPU from it (Python threads, one core's
worth at most under the GIL): on a small machine the figures are the pair's, not the server's alone.

Usage: scripts/bench-serve.py [PLAN] [--seconds S] [--seq N] [--clients 1,4,16,64] [--threads T]
"""

import argparse
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bin_dir():
    if os.environ.get("FFF_BIN"):
        return Path(os.environ["FFF_BIN"])
    subprocess.run(
        ["cargo", "build", "--release", "-q", "-p", "fff-server", "-p", "fff-runtime", "-p", "fff-compiler",
         "-p", "fff-models", "--bins"],
        cwd=ROOT,
        check=True,
    )
    return ROOT / "target" / "release"


def make_encoder(bins, out):
    """The 4-layer FFF encoder of scripts/bench-encoder.sh (same fff-models and fffc commands)."""
    out.mkdir(parents=True, exist_ok=True)
    layers, hidden, heads = os.environ.get("LAYERS", "4"), os.environ.get("HIDDEN", "768"), os.environ.get("HEADS", "12")
    onnx, plan = out / "fff-1x11.onnx", out / f"fff-1x11-L{layers}-H{hidden}.fff"
    if not plan.exists():
        subprocess.run([str(bins / "fff-models"), "encoder", "--layers", layers, "--hidden", hidden,
                        "--heads", heads, "--ff", "fff:1x11", "-o", str(onnx)], check=True)
        subprocess.run([str(bins / "fffc"), "compile", str(onnx), "-o", str(plan)], check=True,
                       stdout=subprocess.DEVNULL)
    return plan


class Server:
    def __init__(self, bins, repo, flags):
        cmd = [str(bins / "fffserve"), "--model-repository", str(repo), "--http-port", "0", *flags]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.port = None
        for line in self.proc.stderr:
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            sys.exit("fffserve did not start")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def inputs_for(meta, seq):
    """Batch 1 x seq: ids from random.seed(0) below 512 (as bench-encoder-lib.sh), mask ones, types 0."""
    random.seed(0)
    ids = [random.randrange(512) for _ in range(seq)]
    out = {}
    for i in meta["inputs"]:
        name = i["name"]
        if "mask" in name:
            out[name] = [1] * seq
        elif "type" in name or "segment" in name:
            out[name] = [0] * seq
        else:
            out[name] = ids
    return out


def binary_body(meta, values):
    """A v2 request with binary tensor data: the JSON part, then each input's little-endian bytes."""
    widths = {"INT64": ("q", 8), "INT32": ("i", 4), "FP32": ("f", 4)}
    import struct

    head = {"inputs": [], "parameters": {"binary_data_output": True}}
    tail = b""
    for i in meta["inputs"]:
        fmt, width = widths[i["datatype"]]
        data = values[i["name"]]
        raw = struct.pack("<%d%s" % (len(data), fmt), *data)
        head["inputs"].append({"name": i["name"], "datatype": i["datatype"], "shape": [1, len(data)],
                               "parameters": {"binary_data_size": len(raw)}})
        tail += raw
    j = json.dumps(head).encode()
    return j + tail, len(j)


def metric_sum_count(server, model, metric="fffserve_batch_size"):
    _, text = server.get("/metrics")
    text = text.decode()
    vals = {}
    for part in ("sum", "count"):
        m = re.search(r'^%s_%s\{model="%s"\} (\S+)' % (metric, part, re.escape(model)), text, re.M)
        vals[part] = float(m.group(1)) if m else 0.0
    return vals["sum"], vals["count"]


def drive(server, model, body, json_len, clients, seconds):
    stop_at = time.perf_counter() + seconds
    lat, errors, lock = [], [], threading.Lock()
    path = f"/v2/models/{model}/infer"
    headers = {"Inference-Header-Content-Length": str(json_len), "Content-Type": "application/octet-stream"}

    def worker():
        mine, errs = [], []
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                if r.status != 200 or int(r.headers.get("Inference-Header-Content-Length", "0")) <= 0:
                    errs.append(f"{r.status} {data[:200]!r}")
                    continue
            except (OSError, http.client.HTTPException) as e:
                errs.append(repr(e))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                continue
            mine.append(time.perf_counter() - t0)
        conn.close()
        with lock:
            lat.extend(mine)
            errors.extend(errs)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return lat, errors, wall


def pct(sorted_ms, p):
    if not sorted_ms:
        return float("nan")
    k = min(len(sorted_ms) - 1, max(0, round(p / 100 * len(sorted_ms) + 0.5) - 1))
    return sorted_ms[k]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("plan", nargs="?", help="a .fff plan (default: the 4-layer FFF encoder)")
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SECONDS_EACH", 10)))
    ap.add_argument("--seq", type=int, default=int(os.environ.get("SEQ", 128)))
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--threads", type=int, default=0, help="fffserve --threads (0: one per core)")
    ap.add_argument("--runs", type=int, default=20, help="fffrun --bench runs")
    opts = ap.parse_args()

    bins = bin_dir()
    out = ROOT / "bench-out" / "serve"
    out.mkdir(parents=True, exist_ok=True)
    plan = Path(opts.plan).resolve() if opts.plan else make_encoder(bins, out)
    # A repository of this one plan (a symbolic link, so nothing is copied).
    repo = out / "repo"
    repo.mkdir(exist_ok=True)
    for old in repo.glob("*.fff"):
        old.unlink()
    model = plan.stem
    (repo / f"{model}.fff").symlink_to(plan)

    configs = [
        ("on (8, 2 ms)", ["--max-batch-size", "8", "--max-queue-delay-ms", "2"]),
        ("off", ["--max-batch-size", "1"]),
    ]
    clients_list = [int(c) for c in opts.clients.split(",")]
    rows = []
    values = None
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    for label, flags in configs:
        server = Server(bins, repo, ["--threads", str(opts.threads), "--max-queue", "1024", *flags])
        try:
            status, meta = server.get(f"/v2/models/{model}")
            assert status == 200, meta
            meta = json.loads(meta)
            values = inputs_for(meta, opts.seq)
            body, json_len = binary_body(meta, values)
            drive(server, model, body, json_len, 1, min(2.0, opts.seconds))  # warm-up
            for clients in clients_list:
                s0, c0 = metric_sum_count(server, model)
                w0, n0 = metric_sum_count(server, model, "fffserve_queue_wait_seconds")
                lat, errors, wall = drive(server, model, body, json_len, clients, opts.seconds)
                s1, c1 = metric_sum_count(server, model)
                w1, n1 = metric_sum_count(server, model, "fffserve_queue_wait_seconds")
                ms = sorted(x * 1000 for x in lat)
                rows.append((label, clients, len(lat) / wall, pct(ms, 50), pct(ms, 90), pct(ms, 99),
                             len(errors), (s1 - s0) / (c1 - c0) if c1 > c0 else float("nan"),
                             1000 * (w1 - w0) / (n1 - n0) if n1 > n0 else float("nan")))
                print(f"  batching {label}, {clients} clients: {len(lat)} requests, {len(errors)} errors",
                      file=sys.stderr)
                if errors:
                    print("    first error: " + errors[0], file=sys.stderr)
        finally:
            server.stop()

    # fffrun on the same plan and input, alone and as 8 rows: how much a batch can save per row.
    bench = {}
    for b in (1, 8):
        inp = out / f"in-{b}x{opts.seq}.json"
        inp.write_text(json.dumps({k: [v] * b for k, v in values.items()}))
        fr = subprocess.run([str(bins / "fffrun"), str(plan), str(inp), "--bench", "--runs", str(opts.runs)]
                            + (["--threads", str(opts.threads)] if opts.threads else []),
                            capture_output=True, text=True, check=True)
        bench[b] = json.loads(fr.stdout.strip().splitlines()[-1])

    print(f"fffserve on {plan.name} ({model}), batch 1 x sequence {opts.seq}, {opts.seconds:g} s per row; "
          f"{os.cpu_count()} cores ({cpu}); server --threads {opts.threads or 'one per core'}")
    print()
    print("| batching | clients | throughput req/s | p50 ms | p90 ms | p99 ms | errors | rows per run "
          "| mean queue wait ms |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, clients, rps, p50, p90, p99, nerr, rpr, wait in rows:
        print(f"| {label} | {clients} | {rps:.1f} | {p50:.2f} | {p90:.2f} | {p99:.2f} | {nerr} | {rpr:.2f} "
              f"| {wait:.3f} |")
    print()
    one, eight = bench[1]["median_ms"], bench[8]["median_ms"]
    print(f"fffrun {plan.name} (same input) --bench, {bench[1].get('threads')} threads, {opts.runs} runs: "
          f"batch 1 {one:.2f} ms ({1000 / one:.1f} rows/s); batch 8 {eight:.2f} ms, {eight / 8:.2f} ms per row "
          f"({8000 / eight:.1f} rows/s): batching can raise the model's throughput at most {one * 8 / eight:.2f}x")
    return 1 if any(r[6] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
