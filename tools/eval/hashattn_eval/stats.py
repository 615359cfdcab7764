"""Means with 95% intervals by a block bootstrap (numpy).

Per-token quantities of one window are correlated (a hard passage is hard for every
method), so the interval resamples blocks of consecutive tokens, not tokens: each
window's decode region is cut into blocks of ``block`` tokens, and the bootstrap draws
blocks (from all windows together) with replacement. The mean of a resample is its
token-weighted mean. The interval is the 2.5 and 97.5 percentiles of ``resamples``
resampled means (seeded, so reruns give the same numbers).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

__all__ = ["block_sums", "bootstrap_mean"]


def block_sums(values: Sequence[np.ndarray], block: int) -> np.ndarray:
    """[(sum, count)] of consecutive blocks of each array (a last short block kept)."""
    out: List[List[float]] = []
    for v in values:
        v = np.asarray(v, dtype=np.float64).ravel()
        for s in range(0, v.size, block):
            part = v[s:s + block]
            out.append([float(part.sum()), float(part.size)])
    return np.array(out, dtype=np.float64).reshape(-1, 2)


def bootstrap_mean(values: Sequence[np.ndarray], block: int = 128, resamples: int = 2000,
                   seed: int = 0) -> Dict[str, float]:
    """{"mean", "lo", "hi", "tokens", "blocks"} of the per-token values of several
    windows; lo/hi is the 95% block-bootstrap interval of the mean."""
    sums = block_sums(values, block)
    if sums.shape[0] == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "tokens": 0,
                "blocks": 0}
    total, count = sums.sum(0)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, sums.shape[0], size=(resamples, sums.shape[0]))
    s = sums[pick]                     # [resamples, blocks, 2]
    means = s[..., 0].sum(1) / s[..., 1].sum(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(total / count), "lo": float(lo), "hi": float(hi),
            "tokens": int(count), "blocks": int(sums.shape[0])}
