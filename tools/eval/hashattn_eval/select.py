"""Which keys a decode row attends to, for every method the evaluation compares (torch).

All methods see the same rows: query row t (0-based position) sees n = t + 1 tokens and
attends to T(n) = I + R + K(n) of them, where, as in libhashattn's budget
(abi/hashattn/hashattn.h, kernels/params.h):

    I = sink tokens, R = recent tokens, K(n) = floor(f * n) for a heavy fraction f
    (computed as (double) float32(f) * n, truncated), and every token when
    n <= I + R + K(n).

The selecting methods keep the sink [0, I), the recent window [n - R, n) and the K
best candidates of [I, n - R) by their own score; streaming keeps [0, I) and the last
R + K tokens instead. Every function returns a bool mask [heads, rows, S] (True =
attended) for query rows ``pos`` [rows] (int64 positions) and S key positions.

Integer scores (hash and SRP bit agreement, Quest page ranks) break ties at the cut-off
toward the newer token, the plugin's rule, by ranking on score * (S + 1) + position.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["Budget", "heavy_count", "visible_mask", "topk_mask", "tiebreak_key",
           "streaming_mask", "random_mask", "oracle_mask", "bits_pm1", "agreement",
           "hash_mlp_bits", "pack_bits", "srp_planes", "quest_mask", "hash_mask"]


class Budget:
    """Sink I, recent R and heavy fraction f (the plugin's hashattn_budget_t)."""

    def __init__(self, sink: int = 128, recent: int = 128, fraction: float = 1 / 16) -> None:
        self.sink = int(sink)
        self.recent = int(recent)
        self.fraction = float(np.float32(fraction))  # the ABI stores a float

    def __repr__(self) -> str:
        return f"Budget(sink={self.sink}, recent={self.recent}, fraction={self.fraction:g})"


def heavy_count(b: Budget, n: torch.Tensor) -> torch.Tensor:
    """K(n) = (int64)((double) f * (double) n), as ha_heavy_budget computes it."""
    return torch.floor(n.to(torch.float64) * b.fraction).to(torch.int64)


def _rows(pos: torch.Tensor, S: int, b: Budget) -> Tuple[torch.Tensor, ...]:
    """(j [1, S], n [rows, 1], K [rows, 1], dense [rows, 1]) for query rows pos."""
    j = torch.arange(S, device=pos.device).unsqueeze(0)
    n = (pos + 1).unsqueeze(1)
    k = heavy_count(b, n)
    dense = n <= b.sink + b.recent + k
    return j, n, k, dense


def visible_mask(pos: torch.Tensor, S: int) -> torch.Tensor:
    """Causal visibility [rows, S]: j <= t."""
    return torch.arange(S, device=pos.device).unsqueeze(0) <= pos.unsqueeze(1)


def _fixed(pos: torch.Tensor, S: int, b: Budget) -> Tuple[torch.Tensor, ...]:
    """(always-kept [rows, S], candidates [rows, S], K [rows], dense [rows, 1])."""
    j, n, k, dense = _rows(pos, S, b)
    keep = (j < min(b.sink, S)) | ((j >= n - b.recent) & (j < n))
    cand = (j >= b.sink) & (j < n - b.recent)
    return keep & (j < n), cand, k.squeeze(1), dense


def tiebreak_key(scores: torch.Tensor) -> torch.Tensor:
    """A ranking key for integer scores [..., S] whose ties go to the larger position:
    score * (S + 1) + j, exact in float32 when it stays below 2^24, else float64."""
    S = scores.shape[-1]
    top = float(scores.max()) if scores.numel() else 0.0
    dtype = torch.float32 if (abs(top) + 1) * (S + 1) < 2 ** 24 else torch.float64
    j = torch.arange(S, device=scores.device, dtype=dtype)
    return scores.to(dtype) * (S + 1) + j


def topk_mask(key: torch.Tensor, pos: torch.Tensor, b: Budget) -> torch.Tensor:
    """Sink + recent + the K(n) candidates with the largest ``key`` [H, rows, S]
    (ties as the key orders them; use :func:`tiebreak_key` for integer scores)."""
    H, rows, S = key.shape
    keep, cand, k, dense = _fixed(pos, S, b)
    mask = keep.unsqueeze(0).expand(H, rows, S).clone()
    kmax = int(k.max()) if rows else 0
    if kmax > 0:
        ranked = key.masked_fill(~cand.unsqueeze(0), float("-inf"))
        idx = ranked.topk(min(kmax, S), dim=-1, sorted=True).indices
        take = torch.arange(idx.shape[-1], device=key.device).unsqueeze(0) < k.unsqueeze(1)
        # rows that are not dense have at least K candidates, so the first K are real ones
        chosen = torch.zeros_like(mask)
        chosen.scatter_(-1, idx, take.unsqueeze(0).expand(H, rows, idx.shape[-1]))
        mask |= chosen & cand.unsqueeze(0)
    vis = visible_mask(pos, S).unsqueeze(0)
    return torch.where(dense.unsqueeze(0), vis, mask)


def streaming_mask(pos: torch.Tensor, S: int, b: Budget, heads: int) -> torch.Tensor:
    """StreamingLLM: the sink and the last R + K(n) tokens (the recent window grown to
    the same total T)."""
    j, n, k, dense = _rows(pos, S, b)
    m = ((j < b.sink) | (j >= n - b.recent - k)) & (j < n)
    m = torch.where(dense, j < n, m)
    return m.unsqueeze(0).expand(heads, -1, -1)


def random_mask(pos: torch.Tensor, S: int, b: Budget, heads: int,
                generator: torch.Generator) -> torch.Tensor:
    """K(n) candidates drawn uniformly without replacement, per head."""
    key = torch.rand((heads, pos.shape[0], S), generator=generator, device=pos.device)
    return topk_mask(key, pos, b)


def oracle_mask(logits: torch.Tensor, pos: torch.Tensor, b: Budget) -> torch.Tensor:
    """The ceiling: the K(n) candidates with the largest true logits q.k, per head."""
    return topk_mask(logits, pos, b)


# ---- signatures ---------------------------------------------------------------------------


def bits_pm1(bits: torch.Tensor) -> torch.Tensor:
    """Signature bits [..., 32] (bool) as +-1 floats, so that bit agreement is a GEMM."""
    return bits.to(torch.float32) * 2 - 1


def agreement(q_pm: torch.Tensor, k_pm: torch.Tensor) -> torch.Tensor:
    """32 - popcount(sig_q ^ sig_k) = (32 + <q_pm, k_pm>) / 2 for +-1 vectors:
    q_pm [H, rows, 32], k_pm [H, S, 32] -> [H, rows, S] (exact small integers)."""
    bits = q_pm.shape[-1]
    return (torch.matmul(q_pm, k_pm.transpose(-1, -2)) + bits) * 0.5


def hash_mlp_bits(x: torch.Tensor, w: dict) -> torch.Tensor:
    """The hash MLP of docs/abi.md "Weight files" per head: x [H, N, D] and weights
    w1 [H, m, D], b1 [H, m], w2 [H, m, m], b2 [H, m], w3 [H, 32, m], b3 [H, 32];
    bit i = (output i > 0), returned as bool [H, N, 32]."""
    h = torch.nn.functional.silu(torch.baddbmm(w["b1"].unsqueeze(1), x, w["w1"].transpose(1, 2)))
    h = torch.nn.functional.silu(torch.baddbmm(w["b2"].unsqueeze(1), h, w["w2"].transpose(1, 2)))
    out = torch.baddbmm(w["b3"].unsqueeze(1), h, w["w3"].transpose(1, 2))
    return out > 0


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool [..., 32] -> int64 [...] signature with bit i = bits[..., i] (the plugin's
    uint32 value)."""
    weights = (1 << torch.arange(bits.shape[-1], device=bits.device, dtype=torch.int64))
    return (bits.to(torch.int64) * weights).sum(-1)


def srp_planes(num_layers: int, num_kv_heads: int, head_dim: int, seed: int,
               bits: int = 32) -> torch.Tensor:
    """Sign-random-projection planes [L, Hkv, D, bits], N(0, 1), from ``seed``; a query
    head uses its KV head's planes, so query and key are hashed alike."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn((num_layers, num_kv_heads, head_dim, bits), generator=g)


def hash_mask(q_bits: torch.Tensor, k_bits: torch.Tensor, pos: torch.Tensor, b: Budget,
              group: int, group_selection: bool) -> torch.Tensor:
    """Selection by bit agreement, the plugin's decode rule.

    q_bits [Hq, rows, 32]; k_bits [Hsig, S, 32] with Hsig = Hq (a signature per query
    head) or Hq / group (one per KV head). Per head: head h scores against signature
    head h (Hsig = Hq) or h // group. Group: one selection per KV head on the sum of its
    ``group`` query heads' scores, shared by those heads. Returns [Hq, rows, S].
    """
    hq = q_bits.shape[0]
    if k_bits.shape[0] != hq:
        k_bits = k_bits.repeat_interleave(hq // k_bits.shape[0], dim=0)
    scores = agreement(bits_pm1(q_bits), bits_pm1(k_bits))
    if group_selection:
        scores = scores.view(hq // group, group, *scores.shape[1:]).sum(1)
        m = topk_mask(tiebreak_key(scores), pos, b)
        return m.repeat_interleave(group, dim=0)
    return topk_mask(tiebreak_key(scores), pos, b)


# ---- Quest -------------------------------------------------------------------------------


def page_bounds(k: torch.Tensor, page: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-page elementwise min and max of keys k [Hkv, S, D] -> two [Hkv, P, D],
    P = ceil(S / page); a last partial page is bounded by the tokens it has."""
    hkv, S, d = k.shape
    P = math.ceil(S / page)
    pad = P * page - S
    lo = torch.nn.functional.pad(k, (0, 0, 0, pad), value=float("inf")).view(hkv, P, page, d)
    hi = torch.nn.functional.pad(k, (0, 0, 0, pad), value=float("-inf")).view(hkv, P, page, d)
    return lo.amin(2), hi.amax(2)


def quest_mask(q: torch.Tensor, k: torch.Tensor, pos: torch.Tensor, b: Budget,
               page: int = 16, bounds: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
               ) -> torch.Tensor:
    """Quest-style page selection, per query head: q [Hq, rows, D], k [Hkv, S, D].

    A page is ``page`` consecutive positions [p*page, (p+1)*page); its upper bound for
    query q is sum_i max(q_i min_i, q_i max_i). Pages holding candidates are ranked by
    that bound (ties to the newer page) and taken whole, best first, until K(n) tokens;
    the last page taken gives its newest candidates only, so that every row attends to
    exactly T(n) tokens like the other methods. Pages are bounded by all their tokens;
    a page holding candidates ends before n - R + page - 1 <= t when R >= page, so no
    bound sees a token the row cannot.
    """
    hq, rows, d = q.shape
    hkv, S, _ = k.shape
    lo, hi = bounds if bounds is not None else page_bounds(k, page)
    g = hq // hkv
    lo = lo.repeat_interleave(g, 0)
    hi = hi.repeat_interleave(g, 0)
    bound = (torch.matmul(q.clamp(min=0), hi.transpose(1, 2))
             + torch.matmul(q.clamp(max=0), lo.transpose(1, 2)))  # [Hq, rows, P]
    P = bound.shape[-1]
    # rank pages: best first, ties to the newer page (a stable sort of the reversed order)
    order = torch.sort(bound.flip(-1), dim=-1, descending=True, stable=True).indices
    order = P - 1 - order
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(P, device=q.device).expand_as(order))
    j = torch.arange(S, device=q.device)
    page_of = (j // page).view(1, 1, S).expand(hq, rows, S)
    tok_rank = torch.gather(rank, -1, page_of)              # [Hq, rows, S]
    key = (P - tok_rank) * page + (j % page)                # exact integers, newer first
    return topk_mask(key.to(torch.float32 if P * page < 2 ** 24 else torch.float64), pos, b)
