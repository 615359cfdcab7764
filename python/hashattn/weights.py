"""Hash weight files: the safetensors layout that ``api->weights_load`` reads.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then
the tensors' bytes. The JSON maps each tensor name to ``{"dtype", "shape",
"data_offsets": [begin, end]}`` (offsets into the data part) and holds a
``__metadata__`` object of string values. hashattn's files hold, for every layer l,

    layers.{l}.query.{w1,b1,w2,b2,w3,b3}   [Hq, ...]
    layers.{l}.key.{w1,b1,w2,b2,w3,b3}     [Hsig, ...]

(one layer of ``hashattn_mlp_weights_t``), dtype F32 or BF16, and the metadata
format="hashattn-weights", version="1", num_layers, num_q_heads, num_kv_heads,
head_dim, mlp_width, hash_bits="32" and signature_layout ("per_query_head" or
"per_kv_head"). Written here with the standard library and numpy only.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from ._dlpack import Reinterpret, _is_torch_tensor, _torch_bits, bfloat16_bits_to_float32, \
    float32_to_bfloat16_bits

__all__ = ["write_weights", "read_weights", "read_metadata", "random_weights", "MLP_PARTS"]

MLP_PARTS = ("w1", "b1", "w2", "b2", "w3", "b3")
PathLike = Union[str, "os.PathLike[str]"]


def _as_numpy(x: Any, name: str) -> Tuple[np.ndarray, bool]:
    """(array, is_bf16_bits): float32 values, or uint16 bfloat16 bit patterns."""
    if isinstance(x, Reinterpret):
        if x.dtype != "bfloat16":
            raise TypeError(f"{name}: {x.dtype} weights; expected float32 or bfloat16")
        arr = _torch_bits(x.array) if _is_torch_tensor(x.array) else np.asarray(x.array)
        return np.ascontiguousarray(arr.view(np.uint16)), True
    if _is_torch_tensor(x):
        if str(x.dtype) == "torch.bfloat16":
            return np.ascontiguousarray(_torch_bits(x).view(np.uint16)), True
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.name == "bfloat16":  # ml_dtypes
        return np.ascontiguousarray(arr.view(np.uint16)), True
    if arr.dtype.kind != "f":
        raise TypeError(f"{name}: dtype {arr.dtype}; expected floating point weights")
    return np.ascontiguousarray(arr, dtype=np.float32), False


def write_weights(path: PathLike, query: Mapping[str, Any], key: Mapping[str, Any], *,
                  num_kv_heads: int, signature_layout: Optional[str] = None,
                  dtype: str = "F32", metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write hash MLP weights (as given to ``Context.bind_weights``) to ``path``.

    ``query`` and ``key`` map w1..b3 to arrays of all layers ([L, H, ...]); float
    arrays, torch tensors or bfloat16 :class:`hashattn.Reinterpret` views.
    ``num_kv_heads`` is needed for the metadata (the shapes hold Hq and Hsig only).
    ``signature_layout`` defaults to "per_kv_head" when the key side has Hkv != Hq
    heads, else "per_query_head". ``dtype`` is "F32" or "BF16" (float values are
    rounded to nearest even). ``metadata`` adds string entries to ``__metadata__``.
    """
    dtype = dtype.upper()
    if dtype not in ("F32", "BF16"):
        raise ValueError(f"dtype = {dtype!r}; expected 'F32' or 'BF16'")
    sides = {"query": query, "key": key}
    arrays: Dict[str, Dict[str, Tuple[np.ndarray, bool]]] = {}
    for side, parts in sides.items():
        missing = [p for p in MLP_PARTS if p not in parts]
        if missing:
            raise ValueError(f"{side}: missing weights {missing}")
        arrays[side] = {p: _as_numpy(parts[p], f"{side}.{p}") for p in MLP_PARTS}

    w1q = arrays["query"]["w1"][0]
    w1k = arrays["key"]["w1"][0]
    if w1q.ndim != 4 or w1k.ndim != 4:
        raise ValueError(f"query.w1 and key.w1 must be [L, H, m, D]; got {w1q.shape}, {w1k.shape}")
    num_layers, num_q_heads, mlp_width, head_dim = (int(s) for s in w1q.shape)
    num_sig_heads = int(w1k.shape[1])
    if signature_layout is None:
        signature_layout = ("per_kv_head" if num_sig_heads == num_kv_heads != num_q_heads
                            else "per_query_head")
    if signature_layout not in ("per_query_head", "per_kv_head"):
        raise ValueError(f"signature_layout = {signature_layout!r}")
    want_sig = num_kv_heads if signature_layout == "per_kv_head" else num_q_heads
    expect = {"w1": (mlp_width, head_dim), "b1": (mlp_width,), "w2": (mlp_width, mlp_width),
              "b2": (mlp_width,), "w3": (32, mlp_width), "b3": (32,)}
    for side, heads in (("query", num_q_heads), ("key", want_sig)):
        for p in MLP_PARTS:
            shape = arrays[side][p][0].shape
            if shape != (num_layers, heads) + expect[p]:
                raise ValueError(f"{side}.{p} has shape {list(shape)}; expected "
                                 f"{[num_layers, heads, *expect[p]]}")

    header: Dict[str, Any] = {}
    meta = {"format": "hashattn-weights", "version": "1", "num_layers": str(num_layers),
            "num_q_heads": str(num_q_heads), "num_kv_heads": str(int(num_kv_heads)),
            "head_dim": str(head_dim), "mlp_width": str(mlp_width), "hash_bits": "32",
            "signature_layout": signature_layout}
    for k, v in (metadata or {}).items():
        meta[str(k)] = str(v)
    header["__metadata__"] = meta

    chunks = []
    offset = 0
    for layer in range(num_layers):
        for side in ("query", "key"):
            for p in MLP_PARTS:
                arr, is_bf16 = arrays[side][p]
                one = arr[layer]
                if dtype == "BF16":
                    data = one if is_bf16 else float32_to_bfloat16_bits(one)
                    raw = np.ascontiguousarray(data, dtype="<u2").tobytes()
                else:
                    vals = bfloat16_bits_to_float32(one) if is_bf16 else one
                    raw = np.ascontiguousarray(vals, dtype="<f4").tobytes()
                header[f"layers.{layer}.{side}.{p}"] = {
                    "dtype": dtype, "shape": [int(s) for s in one.shape],
                    "data_offsets": [offset, offset + len(raw)]}
                chunks.append(raw)
                offset += len(raw)

    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 8)  # the data starts 8-byte aligned
    tmp = os.fspath(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for c in chunks:
            f.write(c)
    os.replace(tmp, path)


def _read_header(path: PathLike) -> Tuple[Dict[str, Any], int, bytes]:
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        raise ValueError(f"{path}: header length {n} runs past the end of the file")
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    return header, 8 + n, blob


def read_metadata(path: PathLike) -> Dict[str, str]:
    """The ``__metadata__`` of a weight file."""
    header, _, _ = _read_header(path)
    return dict(header.get("__metadata__", {}))


def read_weights(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray],
                                          Dict[str, str]]:
    """(query, key, metadata) of a weight file; arrays stacked over layers, float32."""
    header, start, blob = _read_header(path)
    meta = dict(header.get("__metadata__", {}))
    num_layers = int(meta["num_layers"])
    out: Dict[str, Dict[str, np.ndarray]] = {"query": {}, "key": {}}
    for side in ("query", "key"):
        for p in MLP_PARTS:
            layers = []
            for layer in range(num_layers):
                info = header[f"layers.{layer}.{side}.{p}"]
                b, e = info["data_offsets"]
                raw = blob[start + b:start + e]
                if info["dtype"] == "F32":
                    a = np.frombuffer(raw, dtype="<f4").astype(np.float32)
                elif info["dtype"] == "BF16":
                    a = bfloat16_bits_to_float32(np.frombuffer(raw, dtype="<u2").astype(np.uint16))
                else:
                    raise ValueError(f"{path}: tensor layers.{layer}.{side}.{p} has dtype "
                                     f"{info['dtype']}")
                layers.append(a.reshape(info["shape"]))
            out[side][p] = np.stack(layers)
    return out["query"], out["key"], meta


def random_weights(num_layers: int, num_q_heads: int, num_sig_heads: int, head_dim: int,
                   mlp_width: int = 128, *, seed: int = 0
                   ) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Random float32 hash MLP weights (query, key), scaled like torch's Linear init.

    For tests and demos: the signatures they give are arbitrary but deterministic.
    """
    rng = np.random.default_rng(seed)

    def side(heads: int) -> Dict[str, np.ndarray]:
        def lin(out_dim: int, in_dim: int) -> Tuple[np.ndarray, np.ndarray]:
            bound = 1.0 / np.sqrt(in_dim)
            w = rng.uniform(-bound, bound, (num_layers, heads, out_dim, in_dim))
            b = rng.uniform(-bound, bound, (num_layers, heads, out_dim))
            return w.astype(np.float32), b.astype(np.float32)

        w1, b1 = lin(mlp_width, head_dim)
        w2, b2 = lin(mlp_width, mlp_width)
        w3, b3 = lin(32, mlp_width)
        return {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "w3": w3, "b3": b3}

    return side(num_q_heads), side(num_sig_heads)
