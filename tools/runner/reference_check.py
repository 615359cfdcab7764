#!/usr/bin/env python3
"""Check hashattn-run's logits on a real GGUF against an independent
reference: gguf-py's reader and dequantisers (PyPI `gguf`) and a float64
numpy Llama forward pass with llama.cpp's conventions (Q/K rows as stored,
interleaved RoPE), so the runner's un-permutation, half-split RoPE, its own
dequantisers, tokenizer-independent forward pass and the plugin's attention
are all checked at once.

    python3 -m pip install --target /tmp/refdeps gguf numpy
    PYTHONPATH=/tmp/refdeps tools/runner/reference_check.py \\
        --runner build/tools/runner/hashattn-run --attn dense --prefill-chunk 16 \\
        --text "It is a truth universally acknowledged, ..."

Prints the largest logit difference over every prompt position and ends with
"reference_check: OK" (or FAILED) when it is within --tol of the largest logit.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

DEFAULT_TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
                "must be in want of a wife. In 2024, the caf\u00e9 served 3 cr\u00eapes; def f(x): return x**2\n")


def default_model():
    cache = os.environ.get("HASHATTN_CACHE") or os.path.expanduser("~/.cache/hashattn")
    return os.environ.get("HASHATTN_MODEL") or os.path.join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf")


def read_dump(path):
    raw = np.fromfile(path, dtype=np.uint8)
    magic, version, n, v = np.frombuffer(raw[:16].tobytes(), dtype="<u4")
    assert magic == 0x474C4148 and version == 1, "not a hashattn-run logits dump"
    ids = np.frombuffer(raw[16:16 + 4 * n].tobytes(), dtype="<i4")
    logits = np.frombuffer(raw[16 + 4 * n:].tobytes(), dtype="<f4").reshape(n, v)
    return ids, logits


class Reference:
    def __init__(self, path):
        r = GGUFReader(path)
        meta = lambda k: r.fields[k].parts[r.fields[k].data[0]][0]
        self.L = int(meta("llama.block_count"))
        self.E = int(meta("llama.embedding_length"))
        self.H = int(meta("llama.attention.head_count"))
        self.HKV = int(meta("llama.attention.head_count_kv"))
        self.theta = float(meta("llama.rope.freq_base"))
        self.eps = float(meta("llama.attention.layer_norm_rms_epsilon"))
        self.D = self.E // self.H
        t = {x.name: x for x in r.tensors}

        def w(name):
            x = t[name]
            shape = list(reversed([int(s) for s in x.shape]))
            return np.asarray(dequantize(x.data, x.tensor_type), dtype=np.float64).reshape(shape)

        self.emb = w("token_embd.weight")
        self.onorm = w("output_norm.weight")
        self.out = w("output.weight") if "output.weight" in t else self.emb
        names = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"]
        self.layers = [{k: w(f"blk.{l}.{k}.weight") for k in names} for l in range(self.L)]

    def rms(self, x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def rope(self, x, heads):
        n, d = x.shape[0], self.D
        x = x.reshape(n, heads, d // 2, 2)
        ang = np.arange(n)[:, None] * self.theta ** (-2.0 * np.arange(d // 2) / d)
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., 0], x[..., 1]
        return np.stack([a * c - b * s, a * s + b * c], -1).reshape(n, heads * d)

    def forward(self, ids):
        n, H, HKV, D = len(ids), self.H, self.HKV, self.D
        x = self.emb[ids]
        mask = np.triu(np.full((n, n), -np.inf), 1)
        for p in self.layers:
            h = self.rms(x, p["attn_norm"])
            q = self.rope(h @ p["attn_q"].T, H).reshape(n, H, D)
            k = self.rope(h @ p["attn_k"].T, HKV).reshape(n, HKV, D)
            v = (h @ p["attn_v"].T).reshape(n, HKV, D)
            o = np.zeros((n, H, D))
            for hh in range(H):
                s = q[:, hh] @ k[:, hh // (H // HKV)].T / np.sqrt(D) + mask
                s = np.exp(s - s.max(-1, keepdims=True))
                o[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, hh // (H // HKV)]
            x = x + o.reshape(n, self.E) @ p["attn_output"].T
            h = self.rms(x, p["ffn_norm"])
            g = h @ p["ffn_gate"].T
            x = x + ((g / (1 + np.exp(-g))) * (h @ p["ffn_up"].T)) @ p["ffn_down"].T
        return self.rms(x, self.onorm) @ self.out.T


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runner", default="build/tools/runner/hashattn-run")
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--attn", default="dense", choices=["dense", "naive"])
    ap.add_argument("--prefill-chunk", default="16")
    ap.add_argument("--text", default=DEFAULT_TEXT)
    ap.add_argument("--tol", type=float, default=1e-4, help="allowed max |diff| / max |logit|")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "logits.bin")
        subprocess.run([a.runner, "--model", a.model, "--attn", a.attn, "--prefill-chunk", a.prefill_chunk,
                        "--max-new-tokens", "0", "--quiet", "--dump-logits", dump, a.text], check=True,
                       stdout=subprocess.DEVNULL)
        ids, mine = read_dump(dump)
    ref = Reference(a.model).forward(ids)
    diff = np.abs(mine - ref).max()
    scale = np.abs(ref).max()
    agree = (mine.argmax(-1) == ref.argmax(-1)).mean()
    print(f"reference_check(attn={a.attn}, prefill_chunk={a.prefill_chunk}, tokens={len(ids)}): "
          f"max |logit diff| {diff:.2e} of max |logit| {scale:.1f}, argmax agreement {100 * agree:.1f}%")
    ok = diff <= a.tol * scale
    print(f"reference_check: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
