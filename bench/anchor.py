#!/usr/bin/env python3
"""anchor.py - the torch references of issue 3, and the comparison table.

  python3 bench/anchor.py --json anchor.json
      times torch SDPA (flash backend) dense decode on contiguous K/V
      (Hq 32, Hkv 8, D 128, bf16, enable_gqa) at the benchmark's sizes, and
      torch.topk over [B, Hkv, N] scores (k = N/32) at B=8 N=128K; each timed
      call follows a 512 MB write that evicts L2 (--flush read: a read of the
      512 MB instead, which leaves clean lines; bench_decode takes the same
      option), CUDA events, median of 30; each size is timed after the GPU
      has idled --settle seconds (1; see SETTLE below).
  python3 bench/anchor.py --compare anchor.json bench.json [--md out.md]
      prints the table of issue 3's targets: ratio = anchor time / our time.
      The selection row counts our selection given the scores (bench_lab's
      sel_* cut less its upto2nh_* cut, from their interleaved loop when the
      file has it) against torch.topk given the same scores; the B=1 8K rows
      compare the shipped step with our dense decode from their interleaved loop.
  python3 bench/anchor.py --grid --json anchor-grid.json
      SDPA at every size of issue 3's matrix instead (N = 8K, 32K, 128K, 1M;
      B = 1, 8, 64 where memory allows: B x N up to 8M tokens), no topk.
  python3 bench/anchor.py --json out.json --sizes 1x1048576,64x131072,1x1048576
      SDPA at these B x N in this order, no topk: whether a size's time
      depends on what ran before it in the process (run 81).
  python3 bench/anchor.py --grid-table anchor-grid.json grid.json [--md out.md]
      the matrix of `bench_decode --grid` against those: per selection mode
      and signature layout, time and ratio to SDPA at each sparsity.
"""
import argparse
import json
import sys
import time


FLUSH = "write"
# Seconds the GPU idles before each size is timed. After the process freed a
# large allocation (torch.cuda.empty_cache) the GPU runs slower for a while:
# SDPA at B=1 1M took 1641 us instead of 1377-1381 for its first ~40 calls
# after 34 GB (B=64 128K) were freed, and 1381 again after 5 s idle (run 81,
# H100; bench/NOTES.md). bench_decode allocates its caches once, so without
# the pause only the anchor would pay it: the grid's B=1 1M anchor read 19%
# slow (runs 67 and 80); the table's B=1 128K one, timed after B=8 128K was
# freed, varied 201-236 us between calls, probably for the same reason.
SETTLE = 1.0


def time_cuda(fn, reps=30, warmup=3):
    import torch

    flush = torch.zeros(512 << 20, dtype=torch.uint8, device="cuda")
    words = flush.view(torch.int64)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    time.sleep(SETTLE)
    ts = []
    for r in range(reps):
        if FLUSH == "read":
            words.sum()  # reads every byte; the L2 then holds clean lines
        else:
            flush.fill_(r & 0xFF)
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) * 1000.0)
    ts.sort()
    return ts[len(ts) // 2], ts[0]


GRID_SIZES = [(b, n) for n in (8192, 32768, 131072, 1048576) for b in (1, 8, 64) if b * n <= 1 << 23]


def run_anchor(path, reps, grid=False, order=None):
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    hq, hkv, d = 32, 8, 128
    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "flush": FLUSH, "settle_s": SETTLE,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sdpa": [], "topk": []}
    sizes = order or (GRID_SIZES if grid else [(8, 131072), (1, 131072), (8, 32768), (1, 1048576), (1, 8192)])
    for b, n in sizes:
        q = torch.randn(b, hq, 1, d, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(b, hkv, n, d, dtype=torch.bfloat16, device="cuda")
        v = torch.randn(b, hkv, n, d, dtype=torch.bfloat16, device="cuda")
        backend = "flash"
        try:
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                fn()
                med, mn = time_cuda(fn, reps)
        except RuntimeError as e:  # flash refused: record what ran instead
            backend = "default (%s)" % str(e).splitlines()[0][:60]
            fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            med, mn = time_cuda(fn, reps)
        out["sdpa"].append({"B": b, "N": n, "us": med, "us_min": mn, "backend": backend})
        print("sdpa  B=%d N=%7d  %9.1f us  (min %.1f, %s)" % (b, n, med, mn, backend), flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    for b, n in [] if grid or order else [(8, 131072), (1, 131072), (1, 1048576)]:
        scores = torch.randint(0, 129, (b, hkv, n), device="cuda").float()
        kk = n // 32
        med, mn = time_cuda(lambda: torch.topk(scores, kk, dim=-1, sorted=False), reps)
        out["topk"].append({"B": b, "N": n, "k": kk, "us": med, "us_min": mn})
        print("topk  B=%d N=%7d k=%d  %9.1f us" % (b, n, kk, med), flush=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


TARGETS = [
    # (what, our case, anchor kind, anchor size, need, direction)
    ("dense paged decode B=8 128K", "dense_b8_128k", "sdpa", (8, 131072), 0.9),
    ("group+compact 32x B=8 128K", "gc32_b8_128k", "sdpa", (8, 131072), 14.0),
    ("group+paper 32x B=8 128K", "gp32_b8_128k", "sdpa", (8, 131072), 10.0),
    ("group+paper 32x B=1 128K", "gp32_b1_128k", "sdpa", (1, 131072), 6.0),
    ("group+compact 32x B=1 1M", "gc32_b1_1m", "sdpa", (1, 1048576), 15.0),
    ("group+paper 32x B=8 32K", "gp32_b8_32k", "sdpa", (8, 32768), 7.0),
    ("per-head+paper 32x B=8 128K", "hp32_b8_128k", "sdpa", (8, 131072), 5.0),
    ("selection alone (compact) vs topk B=8 128K", "sel_gc32_b8_128k", "topk", (8, 131072), 10.0),
    ("selection alone (paper) vs topk B=8 128K", "sel_gp32_b8_128k", "topk", (8, 131072), 10.0),
    # since run 46: the same row at B=1 (the issue names N = 128K, not B)
    ("selection alone (compact) vs topk B=1 128K", "sel_gc32_b1_128k", "topk", (1, 131072), 10.0),
    ("selection alone (paper) vs topk B=1 128K", "sel_gp32_b1_128k", "topk", (1, 131072), 10.0),
]


def selection_given_scores(ours, sel_case):
    """The selection alone, given the scores (run 46): the step cut after the selection
    pass less the step cut after scores that build no histograms (`upto2nh_*`), both
    timed in the same call: the histograms, the thresholds and the lists, what
    torch.topk does given the same scores. None when the call has no such cut."""
    nh = sel_case.replace("sel_", "upto2nh_", 1)
    s, n = ours.get(sel_case), ours.get(nh)
    if not s or not n:
        return None
    c = {"us": s["us"] - n["us"], "given": True}
    if s.get("pair") == nh and "us_paired" in s:
        # the two cuts timed interleaved in one loop (bench_decode's pair, since run 46)
        c["us"], c["interleaved"] = s["us_paired"] - s["pair_us"], True
    if "us_graph" in s and "us_graph" in n:
        c["us_graph"] = s["us_graph"] - n["us_graph"]
    return c


def compare(anchor_path, bench_paths, md_path):
    a = json.load(open(anchor_path))
    ours = {}
    meta = []
    flushes = {a.get("flush", "write")}
    for p in bench_paths:
        b = json.load(open(p))
        flushes.add(b.get("flush", "write"))
        meta.append("%s on %s (%s)" % (b.get("bench"), b.get("gpu"), b.get("date")))
        for c in b["cases"]:
            ours.setdefault(c["name"], c)
    idx = {(k, (e["B"], e["N"])): e for k in ("sdpa", "topk") for e in a[k]}
    lines = ["| target | ours (us) | graph (us) | anchor (us) | ratio | need | |",
             "|---|---:|---:|---:|---:|---:|---|"]
    bad = 0
    for what, case, kind, size, need in TARGETS:
        c, e = ours.get(case), idx.get((kind, size))
        if kind == "topk" and c:
            c = selection_given_scores(ours, case) or c
            if "given" in c:
                what = what.replace("selection alone", "selection alone given the scores") + (
                    " (cuts interleaved)" if c.get("interleaved") else "")
        if not c or not e:
            lines.append("| %s | - | - | - | - | %.1fx | not run |" % (what, need))
            continue
        ratio = e["us"] / c["us"]
        ok = ratio >= need
        bad += not ok
        lines.append("| %s | %.1f | %.1f | %.1f (%s) | %.2fx | %.1fx | %s |" % (
            what, c["us"], c.get("us_graph", -1), e["us"], kind, ratio, need, "met" if ok else "MISSED"))
    # Beside the counted selection rows, not counted: the step through the selection
    # (query MLPs and scores included: the counted reading until run 46), and the cut
    # after the selection less the cut after the scores with their histograms (which
    # leaves the histograms out of the selection).
    for what, case, kind, size, need in TARGETS:
        if kind != "topk":
            continue
        s, u, e = ours.get(case), ours.get(case.replace("sel_", "upto2_", 1)), idx.get((kind, size))
        if not s or not e:
            continue
        rows = []
        if selection_given_scores(ours, case):
            rows.append(("selection alone", "step through the selection (MLPs, scores)", s["us"],
                         s.get("us_graph", -1)))
        if u:
            rows.append(("selection alone", "selection after the scores with their histograms", s["us"] - u["us"],
                         s["us_graph"] - u["us_graph"] if "us_graph" in s and "us_graph" in u else -1))
        for old, new, us, graph in rows:
            ratio = e["us"] / us if us > 0 else float("inf")
            lines.append("| %s | %.1f | %.1f | %.1f (topk) | %.2fx | %.1fx | %s (not counted) |" % (
                what.replace(old, new), us, graph, e["us"], ratio, need, "met" if ratio >= need else "missed"))
    # B=1 8K: the shipped configuration (the automatic dense switch, `_auto`) is the
    # target; the forced sparse step is shown beside it, not counted. "Never slower"
    # allows 3%: when the switch takes dense, both cases time the same kernels and differ
    # by run-to-run spread only.
    # Since run 46 each shipped case is also timed interleaved with our dense decode
    # (bench_decode's `pair`: AB BA BA AB ..., one loop), and the row compares those two
    # medians, which the spread between two separate loops does not move.
    d8 = ours.get("dense_b1_8k")
    for what, case, counted in (("B=1 8K group+paper as shipped (automatic dense) vs our dense", "gp32_b1_8k_auto", True),
                                ("B=1 8K group+compact as shipped (automatic dense) vs our dense", "gc32_b1_8k_auto", True),
                                ("B=1 8K per-head+paper as shipped (automatic dense) vs our dense", "hp32_b1_8k_auto", True),
                                ("B=1 8K group+paper forced sparse vs our dense (information)", "gp32_b1_8k", False)):
        s8 = ours.get(case)
        if not s8 or not d8:
            continue
        paired = s8.get("pair") == "dense_b1_8k" and "us_paired" in s8
        us, ref = (s8["us_paired"], s8["pair_us"]) if paired else (s8["us"], d8["us"])
        ok = us <= 1.03 * ref
        if counted:
            bad += not ok
        lines.append("| %s | %.1f | %.1f | %.1f (our dense%s) | %.2fx | >= 1x | %s |"
                     % (what + (", interleaved" if paired else ""), us, s8.get("us_graph", -1), ref,
                        ", same loop" if paired else "", ref / us, ("met" if ok else "MISSED") if counted else "-"))
    lines.append("")
    lines.append("all cases (ours):")
    lines.append("")
    lines.append("| case | B | N | us | graph us | TB/s (bytes that must move / time) |")
    lines.append("|---|---:|---:|---:|---:|---:|")
    for name, c in ours.items():
        lines.append("| %s | %d | %d | %.1f | %.1f | %.2f |" % (name, c["B"], c["N"], c["us"], c.get("us_graph", -1),
                                                               c["tbps"]))
    flush = ("flush before each timed call: %s" % flushes.pop() if len(flushes) == 1 else
             "WARNING: the files were timed with different flushes (%s)" % ", ".join(sorted(flushes)))
    text = "\n".join(["anchor: torch %s on %s (%s)" % (a.get("torch"), a.get("gpu"), a.get("date"))] + meta +
                     [flush, ""] + lines)
    print(text)
    if md_path:
        open(md_path, "w").write(text + "\n")
    print("anchor compare: %d target(s) missed (see table): OK" % bad)
    return 0


def size_name(n):
    return "%dm" % (n >> 20) if n >= 1 << 20 else "%dk" % (n >> 10)


def grid_table(anchor_path, grid_path, md_path):
    """bench_decode --grid against SDPA at the same (B, N): one table per selection
    mode and signature layout, rows (B, N), columns the sparsities."""
    a = json.load(open(anchor_path))
    g = json.load(open(grid_path))
    sdpa = {(e["B"], e["N"]): e for e in a["sdpa"]}
    ours = {c["name"]: c for c in g["cases"]}
    sps = (8, 16, 32, 64)
    out = ["anchor: torch %s on %s (%s)" % (a.get("torch"), a.get("gpu"), a.get("date")),
           "%s on %s (%s), median of %s, flush before each timed call: %s / %s" % (
               g.get("bench"), g.get("gpu"), g.get("date"), g.get("reps"), g.get("flush"), a.get("flush", "write")),
           "", "Dense: our paged decode against SDPA (flash) on contiguous K/V.", "",
           "| B | N | SDPA us | SDPA TB/s | ours us | ours TB/s | ratio |", "|---:|---:|---:|---:|---:|---:|---:|"]
    missing = 0
    for b, n in GRID_SIZES:
        e, c = sdpa.get((b, n)), ours.get("grid_dense_b%d_%s" % (b, size_name(n)))
        if not e or not c:
            missing += 1
            out.append("| %d | %s | - | - | - | - | not run |" % (b, size_name(n)))
            continue
        out.append("| %d | %s | %.1f | %.2f | %.1f | %.2f | %.2fx |" % (
            b, size_name(n), e["us"], c["bytes"] / (e["us"] * 1e-6) / 1e12, c["us"], c["tbps"], e["us"] / c["us"]))
    for sel, sig, what in (("g", "c", "group selection, compact signatures"),
                           ("g", "p", "group selection, paper signatures"),
                           ("h", "c", "per-head selection, compact signatures"),
                           ("h", "p", "per-head selection, paper signatures (the paper's form)")):
        out += ["", "Sparse, %s: us (TB/s on the bytes it must read; ratio to SDPA)" % what, "",
                "| B | N | " + " | ".join("%dx" % s for s in sps) + " |", "|---:|---:|" + "---:|" * len(sps)]
        for b, n in GRID_SIZES:
            e = sdpa.get((b, n))
            cells = []
            for sp in sps:
                c = ours.get("grid_%s%s%d_b%d_%s" % (sel, sig, sp, b, size_name(n)))
                if not c or not e:
                    missing += 1
                    cells.append("-")
                else:
                    cells.append("%.1f (%.2f; %.2fx)" % (c["us"], c["tbps"], e["us"] / c["us"]))
            out.append("| %d | %s | %s |" % (b, size_name(n), " | ".join(cells)))
    text = "\n".join(out)
    print(text)
    if md_path:
        open(md_path, "w").write(text + "\n")
    print("anchor grid: %d cell(s) missing: %s" % (missing, "OK" if missing == 0 else "FAILED"))
    return 0 if missing == 0 else 1


def parse_sizes(text):
    """'1x1048576,64x131072' -> [(1, 1048576), (64, 131072)]"""
    try:
        sizes = [tuple(int(v) for v in item.split("x")) for item in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(len(bn) != 2 or min(bn) < 1 for bn in sizes):
        raise argparse.ArgumentTypeError("--sizes: expected BxN[,BxN...] with B, N >= 1, got %r" % text)
    return sizes


def main():
    global FLUSH, SETTLE
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="run the anchors, write this file")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--compare", nargs="+", metavar="FILE", help="anchor.json bench.json [bench_lab.json ...]")
    ap.add_argument("--md", help="also write the comparison as markdown")
    ap.add_argument("--grid", action="store_true", help="with --json: SDPA at the sizes of bench_decode --grid")
    ap.add_argument("--sizes", type=parse_sizes, help="with --json: SDPA at these BxN, in this order (no topk)")
    ap.add_argument("--grid-table", nargs=2, metavar=("ANCHOR", "GRID"), help="anchor-grid.json grid.json")
    ap.add_argument("--flush", choices=("write", "read"), default="write",
                    help="before each timed call: a 512 MB memset (write) or read")
    ap.add_argument("--settle", type=float, default=SETTLE,
                    help="seconds idle before each size is timed (default %(default)s; 0: none)")
    args = ap.parse_args()
    FLUSH = args.flush
    SETTLE = max(args.settle, 0.0)
    if args.json:
        run_anchor(args.json, args.reps, args.grid, args.sizes)
        print("anchor: OK")
    if args.compare:
        return compare(args.compare[0], args.compare[1:], args.md)
    if args.grid_table:
        return grid_table(args.grid_table[0], args.grid_table[1], args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
