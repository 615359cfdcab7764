#!/usr/bin/env python3
"""Tabulate scripts/device-run's ncu_dram log: each kernel's DRAM and L2 bytes per step.

usage: bench/ncu_dram.py NCU_DRAM_TXT

The log holds, per "### case=C flush=F lib=L" section, ncu's CSV rows (one per kernel launch
and metric) for bench_decode's calls of one case: 3 warm-up calls, 2 timed calls each after
its flush, one graph replay without a flush and 2 after one (8 calls). The table gives, per
kernel of the step, the mean over the 4 calls after a flush: time under ncu (kernels
serialised, so no PDL overlap), DRAM bytes read and written, L2 sectors read and written as
bytes. DRAM writes during a step that writes a few MB itself are the flush's dirty lines
being written back (bench_decode's usage, --flush).
"""
import csv
import sys

CALLS = 8
AFTER_FLUSH = (3, 4, 6, 7)
METRICS = {
    "gpu__time_duration.sum": ("us", 1e-3),
    "dram__bytes_read.sum": ("DRAM rd MB", 1e-6),
    "dram__bytes_write.sum": ("DRAM wr MB", 1e-6),
    "lts__t_sectors_op_read.sum": ("L2 rd MB", 32e-6),
    "lts__t_sectors_op_write.sum": ("L2 wr MB", 32e-6),
}
# ncu prints each metric in the unit it picks (times as "ns" with CUDA 13's ncu, run 88); these
# bring them to ns, bytes or sectors
UNITS = {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "ns": 1, "us": 1e3, "ms": 1e6,
         "byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "sector": 1, "": 1}


def sections(path):
    """(title, [csv lines]) for each ### section of the log."""
    title, rows, out = None, [], []
    with open(path) as f:
        for line in f:
            if line.startswith("### "):
                if title:
                    out.append((title, rows))
                title, rows = line[4:].strip(), []
            elif line.startswith('"'):
                rows.append(line)
    if title:
        out.append((title, rows))
    return out


def launches(rows):
    """[(kernel name, {metric: value in base units})] in launch order."""
    seen = {}  # launch ID -> (kernel name, metrics), in launch order
    warned = set()
    for r in csv.DictReader(rows):
        if r.get("ID") is None or r.get("Metric Name") not in METRICS:
            continue
        k = seen.setdefault(r["ID"], (r["Kernel Name"], {}))
        unit = r.get("Metric Unit", "")
        if unit not in UNITS and unit not in warned:
            warned.add(unit)
            print(f"ncu_dram.py: unit {unit!r} of {r['Metric Name']} unknown: read as base units",
                  file=sys.stderr)
        v = float(r["Metric Value"].replace(",", ""))
        k[1][r["Metric Name"]] = v * UNITS.get(unit, 1)
    return list(seen.values())


def short(name):
    """The kernel's name without its arguments, return type and namespace (its template
    arguments stay: they tell the selection pass, LM 1, from the attention pass, LM 2)."""
    name = name.split("(")[0].replace("void ", "").replace("ha::", "")
    return name[:90]


def table(title, ls):
    print(f"### {title}")
    if not ls or len(ls) % CALLS:
        print(f"{len(ls)} launches, not {CALLS} calls of one kernel list: raw below")
        for name, m in ls:
            print(short(name), " ".join(f"{m.get(k, float('nan')):.0f}" for k in METRICS))
        return
    k = len(ls) // CALLS
    heads = [u for u, _ in METRICS.values()]
    print("| kernel | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(heads))
    tot = [0.0] * len(heads)
    for j in range(k):
        vals = []
        for i, (metric, (_, scale)) in enumerate(METRICS.items()):
            v = sum(ls[c * k + j][1].get(metric, 0.0) for c in AFTER_FLUSH) / len(AFTER_FLUSH) * scale
            vals.append(v)
            tot[i] += v
        print(f"| {short(ls[j][0])} | " + " | ".join(f"{v:.1f}" for v in vals) + " |")
    print("| step | " + " | ".join(f"{v:.1f}" for v in tot) + " |")
    print()


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 1
    for title, rows in sections(argv[1]):
        table(title, launches(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
