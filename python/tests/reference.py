"""An independent numpy reference of HashAttention, in float64.

Written from the header's and the design brief's definitions only (never from the
library's sources): the hash MLP, signatures, selection by a full sort, paged
gathers and softmax attention.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def mlp_outputs(w: Dict[str, np.ndarray], layer: int, head: int, x: np.ndarray) -> np.ndarray:
    """The 32 outputs of the hash MLP (layer, head) for rows x [..., D], float64."""
    x = np.asarray(x, np.float64)
    g = lambda k: np.asarray(w[k][layer, head], np.float64)  # noqa: E731
    h1 = silu(x @ g("w1").T + g("b1"))
    h2 = silu(h1 @ g("w2").T + g("b2"))
    return h2 @ g("w3").T + g("b3")


def pack_bits(o: np.ndarray) -> np.ndarray:
    """uint32 signatures of outputs o [..., 32]: bit i = (o[i] > 0)."""
    bits = (o > 0).astype(np.uint64)
    return (bits << np.arange(32, dtype=np.uint64)).sum(axis=-1).astype(np.uint32)


def signatures(w: Dict[str, np.ndarray], layer: int, x: np.ndarray, in_head_of: Sequence[int],
               margin: float = 1e-4) -> Tuple[np.ndarray, np.ndarray]:
    """Signatures [n, H] of x [n, Hin, D] where output head o hashes input head
    in_head_of[o]; and a mask [n, H] of signatures with an output within ``margin``
    of zero (whose bit may legitimately differ with fp32 rounding)."""
    n = x.shape[0]
    heads = len(in_head_of)
    sig = np.zeros((n, heads), np.uint32)
    close = np.zeros((n, heads), bool)
    for o, i in enumerate(in_head_of):
        out = mlp_outputs(w, layer, o, x[:, i, :])
        sig[:, o] = pack_bits(out)
        close[:, o] = (np.abs(out) < margin).any(axis=-1)
    return sig, close


def score(q_sig: int, k_sig: np.ndarray) -> np.ndarray:
    """32 - popcount(q ^ k) for an array of key signatures."""
    x = np.bitwise_xor(np.uint32(q_sig), np.asarray(k_sig, np.uint32))
    pop = np.zeros(x.shape, np.int64)
    for b in range(32):
        pop += ((x >> np.uint32(b)) & np.uint32(1)).astype(np.int64)
    return 32 - pop


def heavy_budget(n: int, sink: int, recent: int, heavy_count: int, heavy_fraction: float
                 ) -> Tuple[bool, int]:
    """(dense, K) for a sequence of n tokens."""
    k = heavy_count if heavy_count >= 0 else int(np.floor(np.float64(np.float32(heavy_fraction)) * n))
    return n <= sink + recent + k, k


def select(n: int, scores: np.ndarray, sink: int, recent: int, k: int) -> List[int]:
    """Attended positions (ascending) of a sparse step: sink, recent, and the k best
    candidates by a full sort on (score descending, position descending)."""
    cand = list(range(sink, n - recent))
    cand.sort(key=lambda j: (-int(scores[j]), -j))
    chosen = set(range(sink)) | set(range(n - recent, n)) | set(cand[:k])
    return sorted(chosen)


def gather(cache: np.ndarray, layout: str, block_row: np.ndarray, positions: Sequence[int],
           head: int, block_size: int) -> np.ndarray:
    """Rows [len(positions), D] of one KV head from a paged cache (float64)."""
    rows = []
    for p in positions:
        b = int(block_row[p // block_size])
        o = p % block_size
        rows.append(cache[b, o, head] if layout == "NHD" else cache[b, head, o])
    return np.asarray(rows, np.float64).reshape(len(rows), cache.shape[-1])


def gather_sig(sig_cache: np.ndarray, block_row: np.ndarray, n: int, head: int,
               block_size: int) -> np.ndarray:
    """Key signatures [n] of one signature head through a block table row."""
    out = np.zeros(n, np.uint32)
    for p in range(n):
        out[p] = sig_cache[int(block_row[p // block_size]), head, p % block_size]
    return out


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """softmax(scale * q.k_j) v over the rows of k and v, float64; zeros if empty."""
    if len(k) == 0:
        return np.zeros(q.shape[-1])
    logits = scale * (k @ np.asarray(q, np.float64))
    p = np.exp(logits - logits.max())
    return (p[:, None] * v).sum(0) / p.sum()


def decode(query: np.ndarray, key_cache: np.ndarray, value_cache: np.ndarray,
           sig_cache: Optional[np.ndarray], block_tables: np.ndarray, seq_lens: np.ndarray,
           q_sigs: Optional[np.ndarray], *, layout: str, block_size: int, group: int,
           group_selection: bool, sig_per_kv_head: bool, scale: float, sink: int, recent: int,
           heavy_count: int, heavy_fraction: float, dense_flag: bool = False
           ) -> Tuple[np.ndarray, List[List[List[int]]]]:
    """(output [S, Hq, D] float64, selections[s][unit] ascending positions).

    q_sigs [S, Hq] are the query signatures (the caller hashes the queries)."""
    num_seqs, hq, d = query.shape
    hkv = hq // group
    out = np.zeros((num_seqs, hq, d))
    sels: List[List[List[int]]] = []
    units = hkv if group_selection else hq
    per_unit = group if group_selection else 1
    for s in range(num_seqs):
        n = int(seq_lens[s])
        row = block_tables[s]
        dense, k = heavy_budget(n, sink, recent, heavy_count, heavy_fraction)
        dense = dense or dense_flag
        seq_sel = []
        for u in range(units):
            heads = range(u * per_unit, (u + 1) * per_unit)
            if n == 0:
                chosen: List[int] = []
            elif dense:
                chosen = list(range(n))
            else:
                total = np.zeros(n, np.int64)
                for h in heads:
                    sh = h // group if sig_per_kv_head else h
                    total += score(int(q_sigs[s, h]), gather_sig(sig_cache, row, n, sh, block_size))
                chosen = select(n, total, sink, recent, k)
            seq_sel.append(chosen)
            for h in heads:
                kk = gather(key_cache, layout, row, chosen, h // group, block_size)
                vv = gather(value_cache, layout, row, chosen, h // group, block_size)
                out[s, h] = attend(query[s, h], kk, vv, scale)
        sels.append(seq_sel)
    return out, sels


def prefill(query: np.ndarray, key_cache: np.ndarray, value_cache: np.ndarray,
            block_tables: np.ndarray, seq_lens: np.ndarray, query_start_loc: np.ndarray, *,
            layout: str, block_size: int, group: int, scale: float) -> np.ndarray:
    """Dense causal attention of chunks, float64 [num_tokens, Hq, D]."""
    out = np.zeros(query.shape)
    for s in range(len(seq_lens)):
        a, b = int(query_start_loc[s]), int(query_start_loc[s + 1])
        n = int(seq_lens[s])
        for i in range(b - a):
            pos = n - (b - a) + i
            for h in range(query.shape[1]):
                kk = gather(key_cache, layout, block_tables[s], range(pos + 1), h // group, block_size)
                vv = gather(value_cache, layout, block_tables[s], range(pos + 1), h // group,
                            block_size)
                out[a + i, h] = attend(query[a + i, h], kk, vv, scale)
    return out
