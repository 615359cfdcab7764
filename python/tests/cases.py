"""Case builders of the adapter's tests: random inputs in every dtype, a context
with bound weights and paged caches filled through cache_write, and the reference
decode of such a case."""
from __future__ import annotations

import types
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

import hashattn
import reference as ref

TOL = {"float32": 2e-5, "float16": 2e-3, "bfloat16": 1.6e-2}


def make_input(rng: np.random.Generator, shape: Sequence[int], dtype: str,
               scale: float = 1.0) -> Tuple[Any, np.ndarray]:
    """(operand for the library, its exact values as float32) of a random array."""
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    if dtype == "float32":
        return x, x.copy()
    if dtype == "float16":
        h = x.astype(np.float16)
        return h, h.astype(np.float32)
    if dtype == "bfloat16":
        bits = hashattn.float32_to_bfloat16_bits(x)
        return hashattn.as_bfloat16(bits), hashattn.bfloat16_bits_to_float32(bits)
    raise ValueError(dtype)


def values(obj: Any) -> np.ndarray:
    """float32 values of an operand (numpy, Reinterpret or torch)."""
    return hashattn.to_float32(obj)


def case_name(**kw: Any) -> str:
    """Canonical case name, e.g. decode(dtype=float32,hq=8,...)."""
    return ",".join(f"{k}={v}" for k, v in kw.items())


class Case(types.SimpleNamespace):
    """A context with bound weights, filled paged caches and decode inputs."""


def build_case(seed: int, *, dtype: str = "float32", hq: int = 8, hkv: int = 2, d: int = 32,
               m: int = 32, block_size: int = 16, layout: str = "NHD",
               selection: str = "group", sig_layout: str = "per_query_head",
               seq_lens: Sequence[int] = (97,), num_layers: int = 2, layer: int = 1,
               spare_blocks: int = 3, budget: Optional[Dict[str, Any]] = None) -> Case:
    """Random weights, K/V of every sequence written through cache_write into shuffled
    blocks, a query per sequence. Prints the seed (visible with pytest -s or on failure)."""
    print(f"CASE seed={seed} dtype={dtype} hq={hq} hkv={hkv} d={d} m={m} block={block_size} "
          f"layout={layout} sel={selection} sig={sig_layout} seq_lens={list(seq_lens)}")
    rng = np.random.default_rng(seed)
    hsig = hkv if sig_layout == "per_kv_head" else hq
    ctx = hashattn.Context(num_layers, hq, hkv, d, block_size=block_size, dtype=dtype,
                           kv_layout=layout, mlp_width=m, selection=selection,
                           signature_layout=sig_layout, budget=budget)
    wq, wk = hashattn.random_weights(num_layers, hq, hsig, d, m, seed=seed)
    ctx.bind_weights(wq, wk)

    seq_lens = np.asarray(seq_lens, np.int32)
    num_seqs = len(seq_lens)
    max_blocks = max(1, int(max((int(n) + block_size - 1) // block_size for n in seq_lens)
                            if num_seqs else 1))
    num_blocks = num_seqs * max_blocks + spare_blocks
    perm = rng.permutation(num_blocks).astype(np.int32)
    block_tables = perm[:num_seqs * max_blocks].reshape(num_seqs, max_blocks).copy()
    key_cache, value_cache, sig_cache = ctx.allocate_caches(num_blocks)

    total = int(seq_lens.sum())
    keys, kvals = make_input(rng, (total, hkv, d), dtype)
    vals, vvals = make_input(rng, (total, hkv, d), dtype)
    slots = np.empty(total, np.int64)
    t = 0
    for s, n in enumerate(seq_lens):
        for p in range(int(n)):
            slots[t] = int(block_tables[s, p // block_size]) * block_size + p % block_size
            t += 1
    ctx.cache_write(layer, keys, vals, key_cache, value_cache, sig_cache, slots)
    query, qvals = make_input(rng, (num_seqs, hq, d), dtype)
    return Case(ctx=ctx, rng=rng, seed=seed, dtype=dtype, hq=hq, hkv=hkv, hsig=hsig, d=d, m=m,
                block_size=block_size, layout=layout, selection=selection,
                sig_layout=sig_layout, layer=layer, wq=wq, wk=wk, seq_lens=seq_lens,
                block_tables=block_tables, key_cache=key_cache, value_cache=value_cache,
                sig_cache=sig_cache, keys=keys, kvals=kvals, vals=vals, vvals=vvals,
                slots=slots, query=query, qvals=qvals, num_blocks=num_blocks)


def reference_decode(c: Case, q_sigs: Optional[np.ndarray], *, sink: int, recent: int,
                     heavy_count: int = -1, heavy_fraction: float = 0.0625,
                     dense_flag: bool = False, query_vals: Optional[np.ndarray] = None
                     ) -> Tuple[np.ndarray, List[List[List[int]]]]:
    return ref.decode(query_vals if query_vals is not None else c.qvals, values(c.key_cache),
                      values(c.value_cache), c.sig_cache, c.block_tables, c.seq_lens, q_sigs,
                      layout=c.layout, block_size=c.block_size, group=c.hq // c.hkv,
                      group_selection=c.selection == "group",
                      sig_per_kv_head=c.sig_layout == "per_kv_head",
                      scale=c.ctx.softmax_scale, sink=sink, recent=recent,
                      heavy_count=heavy_count, heavy_fraction=heavy_fraction,
                      dense_flag=dense_flag)
