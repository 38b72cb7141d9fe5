#!/usr/bin/env python3
"""The machine line and the current-results table of docs/PERFORMANCE.md, for `scripts/perf-table.sh`.

  perf_table.py cpu                              one line naming this CPU: vendor, family and model (and
                                                 the core family they mean), the instruction sets the
                                                 kernels choose between, caches
  perf_table.py table LAYER ENCODER [HF]         the table, from the outputs of scripts/bench-layer.sh,
                                                 scripts/bench-encoder.sh and scripts/bench-hf.sh; each
                                                 argument is a comma-separated list of files, one per
                                                 round, and each cell is the median over the rounds

Each row puts fff beside ONNX Runtime and gives ORT / fff: how many times fff is faster (times) or
smaller (memory).
"""
import glob
import os
import statistics
import sys


def cpuinfo():
    """The first processor's fields of /proc/cpuinfo."""
    info = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if not line.strip():
                break
            k, _, v = line.partition(":")
            info[k.strip()] = v.strip()
    return info


def core_family(vendor, family, model, flags):
    """The core family a vendor's family and model numbers stand for, where this document has seen it."""
    if vendor == "AuthenticAMD":
        if family == 23:
            return "Zen 2" if model >= 0x30 else "Zen"
        if family == 25:
            zen4 = 0x10 <= model <= 0x1F or 0x60 <= model <= 0x7F or 0xA0 <= model <= 0xAF
            return "Zen 4" if zen4 else "Zen 3"
        if family == 26:
            return "Zen 5"
    if vendor == "GenuineIntel":
        if "amx_tile" in flags:
            return "Intel with AMX"
        if "avx512f" in flags:
            return "Intel with AVX-512"
        return "Intel"
    return "unknown core"


def size(text):
    """A sysfs cache size ('32K', '1024K', '32768K') as KiB or MiB."""
    kib = int(text.rstrip("K")) if text.endswith("K") else int(text) // 1024
    return f"{kib // 1024} MiB" if kib >= 1024 and kib % 1024 == 0 else f"{kib} KiB"


def caches():
    """Per-core L1d and L2, and L3 with the CPUs that share it, from sysfs."""
    parts = []
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        def read(name):
            with open(os.path.join(d, name)) as f:
                return f.read().strip()
        level, kind = read("level"), read("type")
        if kind == "Instruction":
            continue
        name = f"L{level}" + ("d" if kind == "Data" else "")
        shared = read("shared_cpu_list")
        n = sum(len(range(int(a), int(b) + 1)) if "-" in r else 1
                for r in shared.split(",") for a, _, b in [r.partition("-")])
        parts.append(f"{size(read('size'))} {name}" + (f" shared by {n} CPUs" if n > 1 else " per core"))
    return ", ".join(parts) or "caches not reported"


def cpu_line():
    info = cpuinfo()
    vendor = info.get("vendor_id", "?")
    family, model = int(info.get("cpu family", "0")), int(info.get("model", "0"))
    flags = set(info.get("flags", "").split())
    isa = [x for x, f in [("AVX2", "avx2"), ("FMA", "fma")] if f in flags]
    if "avx512f" in flags:
        ext = [x for x, f in [("VNNI", "avx512_vnni"), ("BF16", "avx512_bf16"), ("FP16", "avx512_fp16")]
               if f in flags]
        isa.append("AVX-512" + (" (" + ", ".join(ext) + ")" if ext else ""))
    else:
        isa.append("no AVX-512")
    amx = [x for x, f in [("BF16", "amx_bf16"), ("INT8", "amx_int8")] if f in flags]
    isa.append("AMX" + (" (" + ", ".join(amx) + ")" if amx else "") if "amx_tile" in flags else "no AMX")
    cpus = os.cpu_count()
    return (f"{info.get('model name', '?')} ({vendor}, family {family}, model {model}: "
            f"{core_family(vendor, family, model, flags)}), {cpus} logical CPUs; {', '.join(isa)}; "
            f"{caches()}")


def tables(path):
    """Every Markdown table in a file, each a list of rows keyed by its header (the line above the
    `| --- |` line)."""
    out, header, last = [], None, None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("|"):
                header = last = None
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(cells) == {"---"}:
                if header is not None and out and out[-1]:
                    out[-1].pop()  # the line above began a new table, not a row of this one
                header = last
                out.append([])
            elif header is not None:
                out[-1].append(dict(zip(header, cells)))
            last = cells
    return out


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


class Rounds:
    """One benchmark's tables over several rounds; a cell is the median of the rounds that have it."""

    def __init__(self, files):
        self.rounds = [tables(p) for p in files.split(",") if p]

    def cell(self, table, key, column, fmt):
        values = []
        for r in self.rounds:
            if table < len(r):
                for row in r[table]:
                    if all(row.get(k) == v for k, v in key.items()):
                        v = number(row.get(column))
                        if v is not None:
                            values.append(v)
        return fmt % statistics.median(values) if values else "n/a"


def ratio(ort, fff):
    a, b = number(ort), number(fff)
    if a is None or not b:
        return "n/a"
    r = a / b
    return f"{r:.0f}x" if r >= 100 else f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


def rows_text(n):
    return "1 row" if n == 1 else f"{n} rows"


def table(layer, encoder, hf=None):
    L, E = Rounds(layer), Rounds(encoder)
    rows = []

    def row(what, size, threads, fff, ort):
        rows.append((what, size, threads, fff, ort, ratio(ort, fff)))

    g = "%.4g"
    for n, t in [(1, 1), (128, 1), (2048, 1), (16384, 1), (16384, 2)]:
        k = {"rows": str(n), "threads": str(t)}
        row("FFF 1x11 layer (ORT: dense 4095), ms", rows_text(n), t,
            L.cell(0, k, "fff FFF 1x11 ms", g), L.cell(0, k, "ORT dense 4095 ms", g))
    for n in [128, 16384]:
        k = {"rows": str(n), "threads": "1"}
        row("FFF 1x11 layer, bf16 weights (ORT: dense 4095), ms", rows_text(n), 1,
            L.cell(0, k, "fff FFF bf16 ms", g), L.cell(0, k, "ORT dense 4095 ms", g))
    for n in [128, 16384]:
        k = {"rows": str(n), "threads": "1"}
        row("dense 4095 layer, ms", rows_text(n), 1,
            L.cell(0, k, "fff dense 4095 ms", g), L.cell(0, k, "ORT dense 4095 ms", g))
    for kind, fff_col, ort_col in [("FFF", "fff FFF ms", "ORT FFF (masking) ms"),
                                   ("dense", "fff dense ms", "ORT dense ms")]:
        for b, t in [(1, 1), (1, 2), (8, 1), (8, 2)]:
            k = {"batch": str(b), "threads": str(t)}
            row(f"{kind} encoder, ms", f"batch {b}", t,
                E.cell(0, k, fff_col, "%.2f"), E.cell(0, k, ort_col, "%.2f"))
    for kind, model in [("FFF", "fff-1x11"), ("dense", "dense-3072")]:
        k = {"model": model}
        row(f"{kind} encoder load, ms", "-", 1,
            E.cell(1, k, "fff load ms", "%.2f"), E.cell(1, k, "ORT session ms", "%.1f"))
    for kind, model in [("FFF", "fff-1x11"), ("dense", "dense-3072")]:
        k = {"model": model}
        row(f"{kind} encoder peak memory, MiB", "batch 1", 1,
            E.cell(1, k, "fff peak MiB", "%.0f"), E.cell(1, k, "ORT peak MiB", "%.0f"))
    if hf:
        H = Rounds(hf)
        for b, t in [(1, 1), (1, 2), (8, 1), (8, 2)]:
            k = {"batch": str(b), "threads": str(t)}
            row("Hugging Face BERT-base as exported, ms", f"batch {b}", t,
                H.cell(0, k, "fff ms", "%.2f"), H.cell(0, k, "ORT ms", "%.2f"))
    print("| measure | size | threads | fff | ONNX Runtime | ORT / fff |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "cpu":
        print(cpu_line())
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "table":
        table(*sys.argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
