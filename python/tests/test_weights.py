"""Weight binding and the safetensors writer: a file written by hashattn.write_weights
and loaded by the library gives the same context as binding the arrays."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import hashattn
from cases import build_case, make_input

L, HQ, HKV, D, M = 2, 6, 2, 16, 12


def _pair(sig_layout="per_query_head", **kw):
    hsig = HKV if sig_layout == "per_kv_head" else HQ
    cfg = dict(block_size=4, dtype="float32", mlp_width=M, signature_layout=sig_layout, **kw)
    return (hashattn.Context(L, HQ, HKV, D, **cfg), hashattn.Context(L, HQ, HKV, D, **cfg),
            hashattn.random_weights(L, HQ, hsig, D, M, seed=7))


def _same_signatures(a, b, rng):
    x, _ = make_input(rng, (40, HQ, D), "float32")
    k, _ = make_input(rng, (40, HKV, D), "float32")
    for layer in range(L):
        assert np.array_equal(a.hash(layer, x, "query"), b.hash(layer, x, "query"))
        assert np.array_equal(a.hash(layer, k, "key"), b.hash(layer, k, "key"))


@pytest.mark.parametrize("sig_layout", ["per_query_head", "per_kv_head"])
def test_file_round_trip_equals_bind(tmp_path, sig_layout):
    a, b, (wq, wk) = _pair(sig_layout)
    path = tmp_path / "w.safetensors"
    hashattn.write_weights(path, wq, wk, num_kv_heads=HKV, signature_layout=sig_layout)
    a.bind_weights(wq, wk)
    b.load_weights(path)
    _same_signatures(a, b, np.random.default_rng(1))
    q2, k2, meta = hashattn.read_weights(path)
    for p in hashattn.MLP_PARTS:
        assert np.array_equal(q2[p], wq[p]) and np.array_equal(k2[p], wk[p])
    assert meta == {"format": "hashattn-weights", "version": "1", "num_layers": str(L),
                    "num_q_heads": str(HQ), "num_kv_heads": str(HKV), "head_dim": str(D),
                    "mlp_width": str(M), "hash_bits": "32", "signature_layout": sig_layout}
    c = hashattn.Context.from_weights(path, block_size=4, dtype="float32")
    assert (c.num_layers, c.num_q_heads, c.num_sig_heads, c.mlp_width) == (L, HQ, a.num_sig_heads, M)
    _same_signatures(a, c, np.random.default_rng(2))


def test_signature_layout_is_inferred(tmp_path):
    _, _, (wq, wk) = _pair("per_kv_head")
    hashattn.write_weights(tmp_path / "w", wq, wk, num_kv_heads=HKV)
    assert hashattn.read_metadata(tmp_path / "w")["signature_layout"] == "per_kv_head"


def test_file_layout_is_safetensors(tmp_path):
    _, _, (wq, wk) = _pair()
    path = tmp_path / "w.safetensors"
    hashattn.write_weights(path, wq, wk, num_kv_heads=HKV, metadata={"trained_on": "test"})
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert (8 + n) % 8 == 0
    header = json.loads(blob[8:8 + n])
    assert header["__metadata__"]["trained_on"] == "test"
    info = header["layers.1.key.w3"]
    assert info["dtype"] == "F32" and info["shape"] == [HQ, 32, M]
    b, e = info["data_offsets"]
    got = np.frombuffer(blob[8 + n + b:8 + n + e], "<f4").reshape(HQ, 32, M)
    assert np.array_equal(got, wk["w3"][1])
    ends = sorted(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
    assert ends[-1] == len(blob) - 8 - n


def test_bf16_file_equals_binding_rounded_weights(tmp_path):
    a, b, (wq, wk) = _pair()
    path = tmp_path / "w16.safetensors"
    hashattn.write_weights(path, wq, wk, num_kv_heads=HKV, dtype="BF16")
    b.load_weights(path)
    bq = {k: hashattn.as_bfloat16(v) for k, v in wq.items()}   # bf16 bit patterns
    bk = {k: hashattn.as_bfloat16(v) for k, v in wk.items()}
    a.bind_weights(bq, bk)
    _same_signatures(a, b, np.random.default_rng(3))
    q2, _, _ = hashattn.read_weights(path)
    assert np.array_equal(q2["w1"], hashattn.to_float32(bq["w1"]))
    # writing bf16 inputs as F32 keeps their values exactly
    path32 = tmp_path / "w32.safetensors"
    hashattn.write_weights(path32, bq, bk, num_kv_heads=HKV, dtype="F32")
    c = hashattn.Context(L, HQ, HKV, D, block_size=4, dtype="float32", mlp_width=M)
    c.load_weights(path32)
    _same_signatures(a, c, np.random.default_rng(4))


def test_bind_accepts_strided_weights():
    a, b, (wq, wk) = _pair()
    a.bind_weights(wq, wk)
    # the same values inside bigger buffers: non-compact strides
    padded = {}
    for k, v in wq.items():
        buf = np.zeros(v.shape[:-1] + (v.shape[-1] + 3,), np.float32)
        buf[..., :v.shape[-1]] = v
        padded[k] = buf[..., :v.shape[-1]]
    b.bind_weights(padded, wk)
    _same_signatures(a, b, np.random.default_rng(5))


def test_bind_errors_name_the_tensor():
    a, _, (wq, wk) = _pair()
    bad = dict(wq, w2=wq["w2"][:, :, :, :-1])
    with pytest.raises(hashattn.InvalidArgumentError, match=r"weights_bind: query.w2.shape\[3\] = 11, expected 12"):
        a.bind_weights(bad, wk)
    with pytest.raises(hashattn.InvalidArgumentError, match="weights_bind: key.b3.dtype = float64"):
        a.bind_weights(wq, dict(wk, b3=wk["b3"].astype(np.float64)))
    with pytest.raises(hashattn.InvalidArgumentError, match="weights_bind: key.w1 is NULL"):
        a.bind_weights(wq, {k: v for k, v in wk.items() if k != "w1"})
    with pytest.raises(ValueError, match="unknown weight names"):
        a.bind_weights(dict(wq, w4=wq["w1"]), wk)
    nan = dict(wq, b1=wq["b1"].copy())
    nan["b1"][0, 0, 0] = np.nan
    with pytest.raises(hashattn.InvalidArgumentError, match="not finite"):
        a.bind_weights(nan, wk)


def test_load_errors(tmp_path):
    a, _, (wq, wk) = _pair()
    with pytest.raises(hashattn.HashAttnIOError, match="cannot open"):
        a.load_weights(tmp_path / "missing.safetensors")
    path = tmp_path / "w.safetensors"
    hashattn.write_weights(path, wq, wk, num_kv_heads=HKV)
    other = hashattn.Context(L, HQ, HKV, D, dtype="float32", mlp_width=M + 4)
    with pytest.raises(hashattn.FormatError, match='"mlp_width" = "12", the context needs "16"'):
        other.load_weights(path)
    compact = hashattn.Context(L, HQ, HKV, D, dtype="float32", mlp_width=M,
                               signature_layout="per_kv_head")
    with pytest.raises(hashattn.FormatError, match='signature_layout'):
        compact.load_weights(path)
    trunc = tmp_path / "t.safetensors"
    trunc.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(hashattn.FormatError, match="truncated"):
        a.load_weights(trunc)


def test_writer_checks_shapes(tmp_path):
    _, _, (wq, wk) = _pair()
    with pytest.raises(ValueError, match=r"key.b2 has shape \[2, 6, 11\]"):
        hashattn.write_weights(tmp_path / "x", wq, dict(wk, b2=wk["b2"][..., :-1]), num_kv_heads=HKV)
    with pytest.raises(ValueError, match="missing weights"):
        hashattn.write_weights(tmp_path / "x", {}, wk, num_kv_heads=HKV)
    with pytest.raises(ValueError, match="dtype"):
        hashattn.write_weights(tmp_path / "x", wq, wk, num_kv_heads=HKV, dtype="F16")


def test_loaded_weights_drive_decode(tmp_path):
    """A context loaded from the file decodes exactly like the one that was bound."""
    c = build_case(50, hq=4, hkv=2, d=16, m=8, block_size=4, seq_lens=[60, 21])
    path = tmp_path / "w.safetensors"
    hashattn.write_weights(path, c.wq, c.wk, num_kv_heads=2)
    other = hashattn.Context(2, 4, 2, 16, block_size=4, dtype="float32", mlp_width=8)
    other.load_weights(path)
    args = (c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables, c.seq_lens)
    budget = hashattn.Budget(2, 2, 6)
    a = c.ctx.decode(*args, budget=budget, return_selection=True)
    b = other.decode(*args, budget=budget, return_selection=True)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
