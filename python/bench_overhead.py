"""Python-side cost of one Context.decode call (tiny shapes, so the library's own work
is negligible). Run from the repository root:

    HASHATTN_LIBRARY=build/libhashattn.so.1 python3 python/bench_overhead.py

Prints one line per input kind (numpy, and torch CPU tensors when torch is installed)
and a closing summary line ending in OK.
"""
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "tests")]

import hashattn  # noqa: E402
from cases import build_case  # noqa: E402


def main() -> int:
    c = build_case(1, hq=4, hkv=2, d=16, m=8, block_size=16, seq_lens=[3])
    kinds = [("numpy", lambda x: x)]
    try:
        import torch

        def to_torch(x):
            if x.dtype == np.uint32:
                return torch.from_numpy(x.view(np.int32)).view(torch.uint32)
            return torch.from_numpy(x)

        kinds.append(("torch-cpu", to_torch))
    except ImportError:
        pass
    for label, conv in kinds:
        tensors = (c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables, c.seq_lens)
        args = (c.layer,) + tuple(conv(a) for a in tensors)
        out = conv(np.empty_like(c.query))
        for _ in range(200):
            c.ctx.decode(*args, output=out)
        n = 5000
        t = time.perf_counter()
        for _ in range(n):
            c.ctx.decode(*args, output=out)
        us = (time.perf_counter() - t) / n * 1e6
        print(f"decode_call_overhead inputs={label} us_per_call={us:.1f}")
    print(f"bench_overhead kinds={len(kinds)} OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
