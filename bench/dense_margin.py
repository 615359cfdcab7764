#!/usr/bin/env python3
"""dense_margin.py DIR ROUNDS - the spread of issue 3's dense target over repeated runs.

Reads DIR/dense-R.json (bench_decode --json with dense_b8_128k and dense_b1_1m) and
DIR/anchor-R.json (anchor.py --json) for R = 1..ROUNDS, as scripts/device-run's
dense_margin step writes them (each round its own processes, ours then SDPA), and
prints per round our time, SDPA's and the ratio SDPA / ours, then per case the median,
minimum and maximum ratio and in how many rounds it reached 0.9 (the target).
"""
import json
import statistics
import sys

CASES = (("dense_b8_128k", 8, 131072), ("dense_b1_1m", 1, 1048576))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    out, n = sys.argv[1], int(sys.argv[2])
    for name, b, t in CASES:
        ratios = []
        for r in range(1, n + 1):
            ours = next(c["us"] for c in json.load(open(f"{out}/dense-{r}.json"))["cases"] if c["name"] == name)
            ref = next(c["us"] for c in json.load(open(f"{out}/anchor-{r}.json"))["sdpa"]
                       if c["B"] == b and c["N"] == t)
            ratios.append(ref / ours)
            print(f"{name} round {r}: ours {ours:.1f} us, SDPA {ref:.1f} us, ratio {ref / ours:.3f}")
        print(f"{name}: ratio median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, "
              f"max {max(ratios):.3f}; >= 0.9 in {sum(x >= 0.9 for x in ratios)} of {n}")


if __name__ == "__main__":
    main()
