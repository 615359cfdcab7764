#!/usr/bin/env python3
"""bench/overlap_table.py - what the dataflow ceiling (runs 96-97) says about issue 3's rows.

    python3 bench/overlap_table.py DIR [--extra US] [--md FILE]

DIR holds what `scripts/device-run all overlap` wrote: gather-write.json (bench_gather's
overlap cases after the write flush; gather-read.json is shown beside it when present),
lab-1.json .. lab-R.json (bench_lab: the real steps and their cuts after the query MLPs, the
median of the rounds taken) and anchor-overlap.json (torch SDPA at the rows' sizes, same call).

For each row and each overlap form (grouping, block form) it prints the three-launch
prototype ("apart"), its best order with waits in one launch (a dataflow order, L = 1..3, or
the plain order, shown as L 0: at B=1 128K the plain order is the best, run 97), the saving
between them, and two projections
of the row's step, each as a ratio to SDPA against the row's target:

  A (top-down)   the real step less the saving;
  B (bottom-up)  the real step cut after the query MLPs, plus the dataflow case, plus EXTRA
                 us for what the prototype leaves out (the attention arithmetic, the first
                 group's threshold and ties, the combine; default 5);

and beside them the best "mixed" order (no waits: the overlap's own ceiling) with A's
projection taken from it.

bench/NOTES.md "Run 96" says how to read them. Exit status 0, or 2 when a file is missing.
"""
import argparse
import json
import os
import statistics
import sys

# (row, step case, its cut after the query MLPs, bench_gather shape, overlap layout, target, SDPA B, N)
ROWS = [
    ("gc32 B=8 128K", "gc32_b8_128k", "upto1_gc32_b8_128k", "B=8 N=128K", "compact", 14.0, 8, 131072),
    # the query MLPs are the same kernels whatever the signature layout: gc32's cut stands for gp32's
    ("gp32 B=8 128K", "gp32_b8_128k", "upto1_gc32_b8_128k", "B=8 N=128K", "paper", 10.0, 8, 131072),
    ("gp32 B=8 32K", "gp32_b8_32k", "upto1_gp32_b8_32k", "B=8 N=32K", "paper", 7.0, 8, 32768),
    ("gc32 B=1 1M", "gc32_b1_1m", "upto1_gc32_b1_1m", "B=1 N=1M", "compact", 15.0, 1, 1048576),
    ("gp32 B=1 128K", "gp32_b1_128k", "upto1_gp32_b1_128k", "B=1 N=128K", "paper", 6.0, 1, 131072),
]
# (bench_gather's case prefix, its block-form suffix, the table's name for the form)
FORMS = [("overlap", "", "sequence"), ("overlap", " @4x128", "sequence @4x128"),
         ("overlap unit", "", "unit"), ("overlap unit", " @4x128", "unit @4x128")]


def load(path):
    with open(path) as f:
        return json.load(f)


def gather_cases(path):
    """{(shape, case): us} of a bench_gather JSON file"""
    return {(c["shape"], c["case"]): c["us"] for c in load(path)["cases"]}


def lab_medians(d):
    """{case: median us over the rounds lab-1.json, lab-2.json, ...}"""
    runs = {}
    r = 1
    while os.path.exists(os.path.join(d, "lab-%d.json" % r)):
        for c in load(os.path.join(d, "lab-%d.json" % r))["cases"]:
            runs.setdefault(c["name"], []).append(c["us"])
        r += 1
    return {k: statistics.median(v) for k, v in runs.items()}


def form_numbers(g, shape, prefix, form):
    """(apart, best dataflow, its L, best mixed) for one form at one shape, or None when it was
    not timed; "mixed" is the dataflow order without the waits, the overlap's own ceiling"""
    def best(kind):
        got = [(g[(shape, "%s %s L=%d%s" % (prefix, kind, L, form))], L) for L in (1, 2, 3)
               if (shape, "%s %s L=%d%s" % (prefix, kind, L, form)) in g]
        one = (shape, "%s one launch%s" % (prefix, form))
        if kind == "dataflow" and one in g:  # the plain order with its waits: L 0 (run 97)
            got.append((g[one], 0))
        return min(got) if got else None
    apart, flow, mixed = g.get((shape, "%s apart%s" % (prefix, form))), best("dataflow"), best("mixed")
    if apart is None or flow is None or mixed is None:
        return None
    return apart, flow[0], flow[1], mixed[0]


def table(d, extra):
    need = ["gather-write.json", "lab-1.json", "anchor-overlap.json"]
    missing = [f for f in need if not os.path.exists(os.path.join(d, f))]
    if missing:
        print("overlap_table: missing in %s: %s" % (d, ", ".join(missing)), file=sys.stderr)
        return None
    g = gather_cases(os.path.join(d, "gather-write.json"))
    read_path = os.path.join(d, "gather-read.json")
    gr = gather_cases(read_path) if os.path.exists(read_path) else {}
    lab = lab_medians(d)
    anchor = load(os.path.join(d, "anchor-overlap.json"))
    sdpa = {(a["B"], a["N"]): a["us"] for a in anchor["sdpa"]}
    lines = ["# The dataflow ceiling (runs 96-97) against issue 3's rows (%s)" % anchor.get("gpu", "?"), "",
             "Projections: A = the step less (apart - dataflow); B = the MLP cut + dataflow + %.1f us; "
             "no waits: the best mixed order, and A taken from it." % extra,
             "",
             "| row | form | step / SDPA, us (ratio) | apart | one launch: best (L) | saving | A: us, ratio | B: us, ratio "
             "| no waits: mixed, A | target | read flush: apart / dataflow |",
             "|---|---|---|---:|---:|---:|---|---|---|---:|---|"]
    for row, case, cut, shape, layout, target, b, n in ROWS:
        step, mlp, base = lab.get(case), lab.get(cut), sdpa.get((b, n))
        if step is None or mlp is None or base is None:
            lines.append("| %s | - | not timed (%s, %s or SDPA %dx%d missing) | | | | | | %.0fx | |"
                         % (row, case, cut, b, n, target))
            continue
        for prefix, form, label in FORMS:
            nums = form_numbers(g, shape, "%s %s" % (prefix, layout), form)
            if nums is None:
                continue
            apart, flow, L, mixed = nums
            a_us, b_us, m_us = step - (apart - flow), mlp + flow + extra, step - (apart - mixed)
            rd = form_numbers(gr, shape, "%s %s" % (prefix, layout), form)
            met = lambda us: " (met)" if base / us >= target else ""
            lines.append("| %s | %s | %.1f / %.1f (%.2fx) | %.1f | %.1f (%d) | %.1f | %.1f, %.2fx%s | %.1f, %.2fx%s "
                         "| %.1f, %.2fx%s | %.0fx | %s |" % (
                             row, label, step, base, base / step, apart, flow, L, apart - flow,
                             a_us, base / a_us, met(a_us), b_us, base / b_us, met(b_us),
                             mixed, base / m_us, met(m_us), target,
                             "%.1f / %.1f" % (rd[0], rd[1]) if rd else "-"))
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--extra", type=float, default=5.0, help="us the prototype leaves out (default 5)")
    ap.add_argument("--md", help="also write the table to this file")
    args = ap.parse_args()
    text = table(args.dir, args.extra)
    if text is None:
        return 2
    print(text, end="")
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
