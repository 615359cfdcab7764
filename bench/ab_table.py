#!/usr/bin/env python3
"""bench/ab_table.py - the table of an A/B of two libraries from bench_decode's JSON files.

    python3 bench/ab_table.py DIR [SUFFIX]

DIR holds bench-new-R{SUFFIX}.json and bench-ab-R{SUFFIX}.json, R = 1, 2, ... (the device
step bench_ab; SUFFIX "-read" after read flushes). Prints a Markdown table: each case's
medians round by round for the new library and the A/B one, and the change of the new
library's mean against the A/B library's, then one line "ab-table: N cases OK".
"""
import json
import os
import sys


def load(path):
    """bench_decode's JSON: the whole file and its medians by case name"""
    with open(path) as f:
        d = json.load(f)
    return d, {c["name"]: c["us"] for c in d["cases"]}


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    top, sfx = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    rounds = []
    for r in range(1, 100):
        new, ab = (os.path.join(top, f"bench-{w}-{r}{sfx}.json") for w in ("new", "ab"))
        if not (os.path.exists(new) and os.path.exists(ab)):
            break
        rounds.append((load(new), load(ab)))
    if not rounds:
        print(f"ab-table: no bench-new-1{sfx}.json beside bench-ab-1{sfx}.json in {top} FAILED")
        return 1
    (meta, _), _ = rounds[0]  # the first round's new-library file names the GPU, date and cases
    print(f"# {meta['gpu']}, {meta['date']}, flush {meta['flush']}, {len(rounds)} rounds "
          f"(medians of {meta['reps']})\n")
    print("| case | new (us, by round) | A/B library | change of the mean |")
    print("|---|---|---|---:|")
    names = [c["name"] for c in meta["cases"]]
    for n in names:
        nu = [new[n] for (_, new), _ in rounds if n in new]
        au = [ab[n] for _, (_, ab) in rounds if n in ab]
        if not nu or not au:
            continue
        ch = (sum(nu) / len(nu)) / (sum(au) / len(au)) - 1
        print(f"| {n} | {' / '.join(f'{x:.1f}' for x in nu)} | {' / '.join(f'{x:.1f}' for x in au)} "
              f"| {100 * ch:+.1f}% |")
    print(f"\nab-table: {len(names)} cases OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
