"""HashAttention for Hugging Face transformers (5.x) models, through the adapter.

Importing this module registers an attention function and a mask function under the
name ``"hashattn"`` with transformers' ``AttentionInterface`` and
``AttentionMaskInterface``. A model loaded with ``attn_implementation="hashattn"`` then
runs its attention through libhashattn, given a :class:`HashAttnCache` as its KV cache:

    import hashattn.transformers_backend as hf
    model = AutoModelForCausalLM.from_pretrained(..., attn_implementation="hashattn")
    cache = hf.HashAttnCache(model, weights="hash.safetensors", heavy_fraction=1 / 16)
    out = model.generate(ids, max_new_tokens=20, do_sample=False, **hf.cache_kwargs(model, cache))

What happens per layer and forward (``q`` new tokens per sequence):

- the model projects, applies RoPE and calls ``cache.update``, which only counts the
  new tokens and hands them, unchanged, to the attention function (the attention
  function, not ``update``, writes the caches: only it sees the padding mask);
- the attention function writes the new tokens' K, V and key signatures into the
  plugin's paged caches (``cache_write``, pad tokens skipped), then runs dense causal
  ``prefill`` when ``q > 1`` or sparse ``decode`` when ``q == 1``.

The q/k vectors are post-RoPE: Llama-family attention layers apply the rotary embedding
before ``cache.update`` and the attention call (``LlamaAttention.forward`` in 5.x), so the
hash MLPs see the same vectors as the runner and the trainer.

The cache owns everything the plugin needs: one :class:`hashattn.Context` with the hash
weights bound, per-layer paged K/V and signature caches, a block table shared by all
layers, and per-sequence lengths. One cache serves one batch of sequences from its first
token on; make a new one (or :meth:`HashAttnCache.reset`) for a new batch.

Supported: transformers 5.x (checked at import; tested with 5.0, 5.17 and 5.24 on the
CPU backend), torch >= 2.3 (tested: 2.15), decoder-only models with full causal
attention whose attention modules call the attention interface with
``module.layer_idx`` (the Llama family). Greedy and sampled generation, batches with
left padding, chunked prefill. Not supported (clear errors): transformers 4.x and 6+,
sliding windows, logit soft-capping, custom 4D masks, beam search and other cache
reordering, cropping (assisted generation), training.
"""
from __future__ import annotations

import inspect
import math
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .context import Budget, Context
from ._dlpack import Reinterpret
from .weights import read_metadata, random_weights

try:
    import torch
    import transformers
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("hashattn.transformers_backend needs torch and transformers 5.x "
                      f"(python3 -m pip install torch transformers): {e}") from e

__all__ = ["ATTN_IMPLEMENTATION", "SUPPORTED_TRANSFORMERS", "TESTED_TRANSFORMERS",
           "HashAttnCache", "attention_forward", "cache_kwargs", "check_transformers_version",
           "compare_greedy", "mask_function", "register"]

ATTN_IMPLEMENTATION = "hashattn"
SUPPORTED_TRANSFORMERS = ">=5.0,<6"
TESTED_TRANSFORMERS = ("5.0.0", "5.17.0", "5.24.0")
_MIN_TORCH = (2, 3)  # torch.uint32 for the signature caches


def _version_tuple(v: str) -> Tuple[int, ...]:
    """(major, minor, patch) of a version string; "5.0.0rc1" -> (5, 0, 0)."""
    parts = []
    for piece in v.split(".")[:3]:
        m = re.match(r"\d+", piece)
        parts.append(int(m.group()) if m else 0)
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def check_transformers_version(version: Optional[str] = None) -> None:
    """Raise ImportError unless ``version`` (default: the installed transformers and
    torch) is one this module supports: transformers 5.x and torch >= 2.3."""
    v = version if version is not None else transformers.__version__
    major = _version_tuple(v)[0]
    if major != 5:
        raise ImportError(
            f"hashattn.transformers_backend supports transformers {SUPPORTED_TRANSFORMERS} "
            f"(tested: {', '.join(TESTED_TRANSFORMERS)}); found transformers {v}. "
            + ("transformers 4.x passes caches and masks differently; upgrade to 5.x."
               if major < 5 else "this major version is untested; use 5.x."))
    if version is None and _version_tuple(torch.__version__)[:2] < _MIN_TORCH:
        raise ImportError(f"hashattn.transformers_backend needs torch >= 2.3 (torch.uint32); "
                          f"found torch {torch.__version__}")


check_transformers_version()

from transformers import AttentionInterface  # noqa: E402
from transformers.cache_utils import Cache, CacheLayerMixin  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface  # noqa: E402

_TORCH_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


# ---- the link between cache.update and the attention function ---------------------------

# LlamaAttention.forward calls cache.update(k, v, layer_idx) and then the attention
# function with the tensors update returned; the attention function gets neither the
# cache nor its layer's state. update() leaves (state, layer, key) here and the
# attention function takes it, checking that it got the very key tensor update returned.
_link = threading.local()


def _take_link(module: Any, key: Any) -> Optional["_State"]:
    found = getattr(_link, "value", None)
    if found is None:
        return None
    state, layer, k = found
    if k is not key or layer != getattr(module, "layer_idx", None):
        return None
    _link.value = None
    return state


# ---- options -------------------------------------------------------------------------------


def _config_of(model_or_config: Any) -> Any:
    cfg = getattr(model_or_config, "config", model_or_config)
    if hasattr(cfg, "get_text_config"):
        cfg = cfg.get_text_config(decoder=True)
    return cfg


def _check_config(cfg: Any) -> Tuple[int, int, int, int]:
    """(num_layers, Hq, Hkv, D) of a decoder config; refuses what hashattn cannot run."""
    missing = [a for a in ("num_hidden_layers", "num_attention_heads") if not hasattr(cfg, a)]
    if missing:
        raise ValueError(f"model config {type(cfg).__name__} has no {', '.join(missing)}: "
                         "not a decoder model that hashattn can run")
    if getattr(cfg, "is_encoder_decoder", False):
        raise ValueError("encoder-decoder models are not supported: hashattn runs causal "
                         "decoder self-attention only")
    if not getattr(cfg, "is_causal", True):
        raise ValueError("config.is_causal = False (bidirectional attention) is not supported")
    window = getattr(cfg, "sliding_window", None)
    if window is not None and getattr(cfg, "use_sliding_window", True):
        raise ValueError(f"config.sliding_window = {window}: sliding-window attention is not "
                         "supported (every layer must attend to all cached tokens)")
    types = getattr(cfg, "layer_types", None)
    if types and any(t != "full_attention" for t in types):
        raise ValueError(f"config.layer_types = {sorted(set(types))}: only full_attention "
                         "layers are supported")
    for cap in ("attn_logit_softcapping", "attention_logit_softcapping"):
        if getattr(cfg, cap, None):
            raise ValueError(f"config.{cap} = {getattr(cfg, cap)}: logit soft-capping is "
                             "not supported")
    layers = int(cfg.num_hidden_layers)
    hq = int(cfg.num_attention_heads)
    hkv = int(getattr(cfg, "num_key_value_heads", None) or hq)
    d = getattr(cfg, "head_dim", None) or int(cfg.hidden_size) // hq
    if hq % hkv:
        raise ValueError(f"num_attention_heads = {hq} is not a multiple of "
                         f"num_key_value_heads = {hkv}")
    return layers, hq, hkv, int(d)


def _model_scaling(model: Any, default: float) -> float:
    """The softmax scale of the model's attention modules (``module.scaling``)."""
    scales = set()
    if hasattr(model, "modules"):
        for m in model.modules():
            if hasattr(m, "layer_idx") and isinstance(getattr(m, "scaling", None), float):
                scales.add(m.scaling)
    if len(scales) > 1:
        raise ValueError(f"attention modules use different softmax scales {sorted(scales)}; "
                         "one context has one scale")
    return scales.pop() if scales else default


def _model_dtype_device(model: Any) -> Tuple[Optional[Any], Optional[Any]]:
    if hasattr(model, "parameters"):
        for p in model.parameters():
            return p.dtype, p.device
    return None, None


def _weights_shape(path: Union[str, os.PathLike], want: Dict[str, int]) -> Dict[str, Any]:
    """The metadata of a weight file, checked against the model's shape."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"hash weights: no such file {os.fspath(path)!r}")
    try:
        meta = read_metadata(path)
    except Exception as e:
        raise ValueError(f"hash weights {os.fspath(path)!r}: not a readable safetensors "
                         f"file ({e})") from e
    if meta.get("format") != "hashattn-weights":
        raise ValueError(f"hash weights {os.fspath(path)!r}: __metadata__ format = "
                         f"{meta.get('format')!r}, expected 'hashattn-weights'")
    for k, v in want.items():
        got = int(meta.get(k, -1))
        if got != v:
            raise ValueError(f"hash weights {os.fspath(path)!r}: {k} = {got} in the file, "
                             f"but the model has {k} = {v}")
    return meta


# ---- per-forward metadata ----------------------------------------------------------------


@dataclass
class _Step:
    """What every layer of one forward shares: slots, lengths, block table."""

    start: int                # padded position of the first new token (all sequences)
    q: int                    # new tokens per sequence (padding included)
    slot_mapping: Any         # [B*q] int64, -1 for pad tokens
    block_tables: Any         # [B, max_blocks] int32
    seq_lens: Any             # [B] int32, cached tokens after this step
    decode_seq_lens: Any      # [B] int32 (q == 1): seq_lens, 0 where the token is a pad
    query_start_loc: Any      # [B+1] int32 (prefill)
    rows: Any                 # [n_real] int64 rows of the real tokens, None when no pads
    real_tokens: int          # sum of real new tokens
    decode_total: int         # sum of decode_seq_lens (q == 1)

    @property
    def end(self) -> int:
        return self.start + self.q


class _State:
    """The plugin-side state of one HashAttnCache (shared by its layers)."""

    def __init__(self, ctx: Context, num_layers: int, device: Any, dtype: Any,
                 dense: bool, record_selection: bool, initial_blocks: Optional[int]) -> None:
        self.ctx = ctx
        self.num_layers = num_layers
        self.device = torch.device(device)
        self.dtype = dtype
        self.dense = dense
        self.record_selection = record_selection
        self.initial_blocks = initial_blocks
        self.bs = ctx.block_size
        self.config: Any = None
        self.key_caches: List[Any] = []
        self.value_caches: List[Any] = []
        self.sig_caches: List[Any] = []
        self.num_blocks = 0
        self.reset()

    def reset(self) -> None:
        self.batch: Optional[int] = None
        self.free: List[int] = list(range(self.num_blocks - 1, -1, -1))  # pop() -> lowest id
        self.table = np.zeros((0, 0), np.int32)   # [B, cols] block ids, host
        self.nblocks: List[int] = []               # blocks held per sequence
        self.cached: List[int] = []                # real tokens cached per sequence
        self.tokens = [0] * self.num_layers        # padded positions seen per layer (update)
        self.consumed = [0] * self.num_layers      # positions the attention has run for
        self.end = 0                               # padded positions committed by steps
        self.step: Optional[_Step] = None
        self.table_tensor: Any = None
        self.broken: Optional[str] = None
        self.counts: Dict[int, Any] = {}
        self.decode_calls = 0
        self.attended = torch.zeros((), dtype=torch.int64, device=self.device)
        self.available = 0

    # -- blocks --

    def _grow_pool(self, need_free: int) -> None:
        """Make at least ``need_free`` blocks free, reallocating every layer's caches
        with more blocks (old block ids stay valid: their contents are copied)."""
        if len(self.free) >= need_free:
            return
        old = self.num_blocks
        want = old + need_free - len(self.free)
        new = max(want, 2 * old, self.initial_blocks or 0)
        for layer in range(self.num_layers):
            kc, vc, sc = self.ctx.allocate_caches(new, backend="torch")
            if old:
                kc[:old].copy_(self.key_caches[layer])
                vc[:old].copy_(self.value_caches[layer])
                sc[:old].copy_(self.sig_caches[layer])
            if layer < len(self.key_caches):
                self.key_caches[layer], self.value_caches[layer] = kc, vc
                self.sig_caches[layer] = sc
            else:
                self.key_caches.append(kc)
                self.value_caches.append(vc)
                self.sig_caches.append(sc)
        self.free = list(range(new - 1, old - 1, -1)) + self.free
        self.num_blocks = new

    def _ensure_blocks(self, lens_after: Sequence[int]) -> bool:
        """Give every sequence enough blocks for ``lens_after`` tokens; True if the
        block table changed."""
        need = [max(0, -(-n // self.bs) - have) for n, have in zip(lens_after, self.nblocks)]
        total = sum(need)
        if total == 0:
            return False
        self._grow_pool(total)
        cols = max(h + n for h, n in zip(self.nblocks, need))
        if cols > self.table.shape[1]:
            wider = np.zeros((self.batch, max(cols, 2 * self.table.shape[1])), np.int32)
            wider[:, :self.table.shape[1]] = self.table
            self.table = wider
        for s, n in enumerate(need):
            for _ in range(n):
                self.table[s, self.nblocks[s]] = self.free.pop()
                self.nblocks[s] += 1
        return True

    # -- steps --

    def begin(self, batch: int) -> None:
        """Called by update(): layer bookkeeping before the attention runs."""
        if self.batch is None:
            self.batch = batch
            self.nblocks = [0] * batch
            self.cached = [0] * batch
            self.table = np.zeros((batch, 0), np.int32)
        elif batch != self.batch:
            raise ValueError(f"the cache holds {self.batch} sequences but this forward has "
                             f"batch size {batch}; use a new HashAttnCache (or reset()) for a "
                             "new batch")

    def step_for(self, layer: int, q: int, mask: Any) -> _Step:
        start = self.tokens[layer] - q
        st = self.step
        if st is not None and st.start == start and st.q == q:
            return st
        if start != self.end:
            raise RuntimeError(f"layer {layer} is at position {start} but the cache is at "
                               f"{self.end}: the layers ran out of step")
        self.step = st = self._new_step(start, q, mask)
        self.end = st.end
        return st

    def _new_step(self, start: int, q: int, mask: Any) -> _Step:
        b = self.batch
        if mask is None:
            real = None
        else:
            if mask.dim() != 2 or mask.shape[0] != b or mask.shape[1] < q:
                raise ValueError(f"attention_mask of shape {list(mask.shape)}: hashattn takes "
                                 f"a 2D padding mask [batch={b}, >= {q}] (custom 4D masks are "
                                 "not supported)")
            real = mask[:, -q:].to(device="cpu", dtype=torch.bool).numpy()
            if real.all():
                real = None
        counts = np.full(b, q, np.int64) if real is None else real.sum(axis=1)
        before = np.asarray(self.cached, np.int64)
        after = before + counts
        if self._ensure_blocks(after.tolist()) or self.table_tensor is None:
            self.table_tensor = torch.from_numpy(self.table.copy()).to(self.device)
        if real is None:
            pos = before[:, None] + np.arange(q)[None, :]
        else:
            pos = before[:, None] + np.cumsum(real, axis=1) - 1
        pos_c = np.maximum(pos, 0)
        slots = (self.table[np.arange(b)[:, None], pos_c // self.bs].astype(np.int64) * self.bs
                 + pos_c % self.bs)
        if real is not None:
            slots = np.where(real, slots, -1)
        self.cached = after.tolist()
        dev = self.device
        seq_lens = torch.from_numpy(after.astype(np.int32)).to(dev)
        decode_lens, decode_total = None, 0
        if q == 1:
            attending = after if real is None else after * real[:, 0]
            decode_total = int(attending.sum())
            decode_lens = seq_lens if real is None else torch.from_numpy(
                attending.astype(np.int32)).to(dev)
        qsl = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)).to(dev)
        rows = None
        if real is not None:
            rows = torch.from_numpy(np.flatnonzero(real.reshape(-1)).astype(np.int64)).to(dev)
        return _Step(start=start, q=q,
                     slot_mapping=torch.from_numpy(slots.reshape(-1)).to(dev),
                     block_tables=self.table_tensor, seq_lens=seq_lens,
                     decode_seq_lens=decode_lens, query_start_loc=qsl, rows=rows,
                     real_tokens=int(counts.sum()), decode_total=decode_total)

    # -- the attention of one layer --

    def attend(self, layer: int, query: Any, key: Any, value: Any, mask: Any) -> Any:
        b, hq, q, d = query.shape
        st = self.step_for(layer, q, mask)
        ctx = self.ctx
        sig = self.sig_caches[layer]
        sig_arg = sig if sig.dtype != torch.int32 else Reinterpret(sig, "uint32")
        kc, vc = self.key_caches[layer], self.value_caches[layer]
        k_tok = key.transpose(1, 2).reshape(b * q, key.shape[1], d)
        v_tok = value.transpose(1, 2).reshape(b * q, value.shape[1], d)
        ctx.cache_write(layer, k_tok, v_tok, kc, vc, sig_arg, st.slot_mapping)
        q_tok = query.transpose(1, 2)  # [B, q, Hq, D]
        if q == 1:
            counts = None
            if self.record_selection:
                counts = self.counts.get(layer)
                if counts is None or counts.shape[0] != b:
                    counts = self.counts[layer] = torch.zeros(
                        (b, ctx.num_sel_heads), dtype=torch.int32, device=self.device)
            out = ctx.decode(layer, q_tok[:, 0], kc, vc, sig_arg, st.block_tables,
                             st.decode_seq_lens, dense=self.dense, selected_counts=counts)
            if counts is not None:
                self.decode_calls += 1
                self.attended += counts.sum(dtype=torch.int64)
                self.available += st.decode_total * ctx.num_sel_heads
            return out.view(b, 1, hq, d)
        flat = q_tok.reshape(b * q, hq, d)
        if st.rows is not None:
            flat = flat.index_select(0, st.rows)
        out = ctx.prefill(layer, flat, kc, vc, st.block_tables, st.seq_lens, st.query_start_loc)
        if st.rows is not None:
            full = out.new_zeros((b * q, hq, d))
            full.index_copy_(0, st.rows, out)
            out = full
        return out.view(b, q, hq, d)


# ---- the cache -------------------------------------------------------------------------------


class _HashAttnLayer(CacheLayerMixin):
    """One model layer's view of the shared state: counts positions, holds no tensors
    (the paged caches live in the state)."""

    is_compileable = False
    is_sliding = False

    def __init__(self, state: _State, layer: int) -> None:
        super().__init__()
        self._state = state
        self._layer = layer

    def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
        self.is_initialized = True

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any
               ) -> Tuple[Any, Any]:
        s, layer = self._state, self._layer
        if s.broken:
            raise RuntimeError(f"this HashAttnCache is unusable after an earlier error "
                               f"({s.broken}); make a new one or call reset()")
        impl = getattr(s.config, "_attn_implementation", ATTN_IMPLEMENTATION)
        if impl != ATTN_IMPLEMENTATION:
            why = f"the model runs attn_implementation = {impl!r}"
        elif s.consumed[layer] != s.tokens[layer]:
            why = f"layer {layer}'s previous tokens never reached the hashattn attention function"
        else:
            why = None
        if why:
            raise RuntimeError(
                f"{why}: HashAttnCache only holds tokens that the '{ATTN_IMPLEMENTATION}' "
                f"attention wrote; load the model with attn_implementation="
                f"'{ATTN_IMPLEMENTATION}' (or call model.set_attn_implementation("
                f"'{ATTN_IMPLEMENTATION}'))")
        if key_states.dim() != 4:
            raise ValueError(f"key_states of shape {list(key_states.shape)}; expected "
                             "[batch, kv_heads, tokens, head_dim]")
        s.begin(int(key_states.shape[0]))
        s.tokens[layer] += int(key_states.shape[2])
        self.is_initialized = True
        _link.value = (s, layer, key_states)
        return key_states, value_states

    def get_mask_sizes(self, query_length: Any, *args: Any, **kwargs: Any) -> Tuple[int, int]:
        if isinstance(query_length, torch.Tensor):  # older 5.x passed cache_position
            query_length = int(query_length.shape[0])
        return self._state.tokens[self._layer] + int(query_length), 0

    def get_seq_length(self, *args: Any, **kwargs: Any) -> int:
        return self._state.tokens[self._layer]

    def get_max_length(self) -> int:
        return -1

    def get_max_cache_shape(self) -> int:
        return -1

    def reset(self) -> None:
        self._state.reset()

    def _unsupported(self, what: str) -> None:
        raise NotImplementedError(f"HashAttnCache does not support {what}: the paged caches "
                                  "are append-only per sequence (greedy or sampled "
                                  "generation of one batch)")

    def reorder_cache(self, beam_idx: Any) -> None:
        self._unsupported("beam search (reorder_cache)")

    def crop(self, max_length: int) -> None:
        self._unsupported("crop (assisted or speculative generation)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._unsupported("batch_repeat_interleave")

    def batch_select_indices(self, indices: Any) -> None:
        self._unsupported("batch_select_indices")

    def offload(self) -> None:
        self._unsupported("offloading")

    def prefetch(self) -> None:
        self._unsupported("offloading")


WeightsArg = Union[str, "os.PathLike[str]", Tuple[Mapping[str, Any], Mapping[str, Any]]]


class HashAttnCache(Cache):
    """The KV cache of a model running with ``attn_implementation="hashattn"``.

    Arguments:
      model: the model (or its config). Its config gives the number of layers, Hq, Hkv
        and the head dim; its parameters give the dtype and device (override with
        ``dtype``/``device``; from a config alone the defaults are float32 on the CPU).
      weights: the hash MLP weights: a path to a hashattn safetensors file (its metadata
        must match the model and gives mlp_width and signature_layout), the string
        ``"random"`` for seeded random weights (``seed``, ``mlp_width``; signatures are
        then meaningless but deterministic: tests and full-budget runs), or a
        ``(query, key)`` pair of dicts as ``Context.bind_weights`` takes.
      sink_tokens, recent_tokens, heavy_fraction, heavy_count: the decode budget
        (``hashattn.Budget``; ``heavy_fraction=1.0`` attends to every token), or
        ``budget=`` a Budget or dict instead of the four.
      selection: "group" (one selection per KV head, default) or "per_head".
      signature_layout: "per_query_head" (default) or "per_kv_head"; with a weight file,
        the file's (a different explicit value is an error).
      dense: decode with the plugin's dense path (HASHATTN_DECODE_DENSE), ignoring the
        budget and the signatures.
      block_size, kv_layout ("NHD"/"HND"), initial_blocks: the paged caches' shape; the
        pool grows by doubling when a step needs more blocks.
      record_selection: count the tokens each decode attends to (see
        :meth:`selection_stats` and :meth:`last_selected_counts`).
      dense_below: the context's ``dense_below``: 0 (default) lets a CUDA context decode
        sequences too short for the sparse step to pay densely; -1 keeps every decode
        sparse (comparisons with the CPU, or with the C runner's ``--dense-below -1``).
    """

    def __init__(self, model: Any, *, weights: Optional[WeightsArg] = None, seed: int = 0,
                 mlp_width: Optional[int] = None,
                 sink_tokens: int = 128, recent_tokens: int = 128, heavy_fraction: float = 1 / 16,
                 heavy_count: int = -1,
                 budget: Optional[Union[Budget, Mapping[str, Any]]] = None,
                 selection: str = "group", signature_layout: Optional[str] = None,
                 dense: bool = False, block_size: int = 16, kv_layout: str = "NHD",
                 initial_blocks: Optional[int] = None, record_selection: bool = False,
                 dtype: Any = None, device: Any = None, dense_below: int = 0) -> None:
        cfg = _config_of(model)
        num_layers, hq, hkv, d = _check_config(cfg)
        impl = getattr(cfg, "_attn_implementation", None)
        if impl is not None and impl != ATTN_IMPLEMENTATION:
            raise ValueError(
                f"the model runs attn_implementation = {impl!r}; load it with "
                f"attn_implementation='{ATTN_IMPLEMENTATION}' (or call "
                f"model.set_attn_implementation('{ATTN_IMPLEMENTATION}')) to use HashAttnCache")
        mdtype, mdevice = _model_dtype_device(model)
        dtype = dtype if dtype is not None else (mdtype if mdtype is not None else torch.float32)
        device = torch.device(device if device is not None else (mdevice or "cpu"))
        if dtype not in _TORCH_DTYPES:
            raise ValueError(f"dtype = {dtype}: hashattn runs float16 and bfloat16 (and "
                             "float32 on the CPU)")
        if device.type == "cuda" and dtype == torch.float32:
            raise ValueError("float32 runs on the CPU backend only; use bfloat16 or float16 "
                             "on CUDA")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device = {device}: hashattn runs on 'cpu' and 'cuda'")
        if device.type == "cuda":
            from ._library import has_cuda  # noqa: PLC0415
            if not has_cuda():
                raise ValueError("the loaded libhashattn was built without its CUDA backend "
                                 "(cmake -DHASHATTN_WITH_CUDA=ON), so it cannot run on "
                                 f"{device}")
            if device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
        if budget is None:
            budget = Budget(int(sink_tokens), int(recent_tokens), int(heavy_count),
                            float(heavy_fraction))
        else:
            budget = Budget.of(budget)

        if weights is None:
            raise ValueError("weights: give a hashattn weight file path, a (query, key) pair "
                             "of weight dicts, or 'random' for seeded random hash weights")
        path = None
        if isinstance(weights, (str, os.PathLike)) and os.fspath(weights) != "random":
            path = os.fspath(weights)
            meta = _weights_shape(path, {"num_layers": num_layers, "num_q_heads": hq,
                                         "num_kv_heads": hkv, "head_dim": d})
            file_layout = meta.get("signature_layout", "per_query_head")
            if signature_layout is not None and signature_layout != file_layout:
                raise ValueError(f"signature_layout = {signature_layout!r}, but the weight "
                                 f"file {path!r} has {file_layout!r}")
            signature_layout = file_layout
            if mlp_width is not None and int(meta["mlp_width"]) != int(mlp_width):
                raise ValueError(f"mlp_width = {mlp_width}, but the weight file {path!r} has "
                                 f"{meta['mlp_width']}")
            mlp_width = int(meta["mlp_width"])
        elif not isinstance(weights, (str, os.PathLike)) and not (
                isinstance(weights, (tuple, list)) and len(weights) == 2):
            raise TypeError(f"weights: expected a path, 'random' or a (query, key) pair; got "
                            f"{type(weights).__name__}")
        signature_layout = signature_layout or "per_query_head"
        if mlp_width is None:
            if isinstance(weights, (tuple, list)):
                mlp_width = int(np.shape(weights[0]["w1"])[2])
            else:
                mlp_width = 128

        scale = _model_scaling(model, 1.0 / math.sqrt(d))
        ctx = Context(num_layers, hq, hkv, d, block_size=block_size,
                      dtype=_TORCH_DTYPES[dtype], device=str(device), kv_layout=kv_layout,
                      mlp_width=mlp_width, selection=selection,
                      signature_layout=signature_layout, softmax_scale=scale, budget=budget,
                      dense_below=dense_below)
        if path is not None:
            ctx.load_weights(path)
        elif isinstance(weights, (tuple, list)):
            ctx.bind_weights(weights[0], weights[1])
        else:
            qw, kw = random_weights(num_layers, hq, ctx.num_sig_heads, d, mlp_width, seed=seed)
            ctx.bind_weights(qw, kw)

        self._state = _State(ctx, num_layers, device, dtype, bool(dense), bool(record_selection),
                             initial_blocks)
        self._state.config = cfg
        self.weights_path = path
        super().__init__(layers=[_HashAttnLayer(self._state, i) for i in range(num_layers)])

    # -- Cache interface --

    def update(self, key_states: Any, value_states: Any, layer_idx: int, *args: Any,
               **kwargs: Any) -> Tuple[Any, Any]:
        if not 0 <= layer_idx < len(self.layers):
            raise ValueError(f"layer_idx = {layer_idx}; the cache has {len(self.layers)} layers")
        return self.layers[layer_idx].update(key_states, value_states)

    def get_seq_length(self, layer_idx: int = 0, *args: Any, **kwargs: Any) -> int:
        if layer_idx >= len(self.layers):
            return 0
        return self.layers[layer_idx].get_seq_length()

    def get_mask_sizes(self, query_length: Any, layer_idx: int = 0, *args: Any,
                       **kwargs: Any) -> Tuple[int, int]:
        return self.layers[min(layer_idx, len(self.layers) - 1)].get_mask_sizes(query_length)

    def reset(self) -> None:
        """Forget every sequence (the context, its weights and the cache pool stay)."""
        self._state.reset()

    def reorder_cache(self, beam_idx: Any) -> None:
        self.layers[0].reorder_cache(beam_idx)

    def crop(self, max_length: int) -> None:
        self.layers[0].crop(max_length)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.layers[0].batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: Any) -> None:
        self.layers[0].batch_select_indices(indices)

    @property
    def is_compileable(self) -> bool:
        return False

    # -- hashattn --

    @property
    def context(self) -> Context:
        """The :class:`hashattn.Context` (one for all layers, weights bound)."""
        return self._state.ctx

    @property
    def budget(self) -> Budget:
        return self._state.ctx.budget

    @property
    def block_size(self) -> int:
        return self._state.bs

    def paged_caches(self, layer: int) -> Tuple[Any, Any, Any]:
        """(key_cache, value_cache, signature_cache) of a layer (torch tensors; the
        signature cache is uint32). Empty before the first forward."""
        s = self._state
        if layer >= len(s.key_caches):
            return None, None, None
        return s.key_caches[layer], s.value_caches[layer], s.sig_caches[layer]

    def block_table(self) -> Any:
        """[batch, max_blocks] int32 numpy array of the sequences' block ids (columns past
        a sequence's last block are 0 and unused)."""
        s = self._state
        return s.table[:, :max(s.nblocks, default=0)].copy()

    def cached_tokens(self) -> List[int]:
        """Real (non-pad) tokens cached per sequence."""
        return list(self._state.cached)

    def slots(self, sequence: int) -> Any:
        """int64 numpy array: the cache slot (block * block_size + offset) of each of
        the sequence's cached tokens, in order."""
        s = self._state
        n = s.cached[sequence]
        pos = np.arange(n)
        return s.table[sequence, pos // s.bs].astype(np.int64) * s.bs + pos % s.bs

    def last_selected_counts(self, layer: int) -> Any:
        """[batch, Hsel] int32 tensor: tokens the layer's last decode attended to per
        sequence and selection head (needs ``record_selection=True``)."""
        if not self._state.record_selection:
            raise ValueError("make the cache with record_selection=True to get counts")
        return self._state.counts.get(layer)

    def selection_stats(self) -> Dict[str, Any]:
        """Totals over every recorded decode: ``decode_calls`` (layer calls),
        ``attended`` and ``available`` (token x selection-head pairs) and their ratio
        ``fraction`` (1.0 = dense). Needs ``record_selection=True``."""
        s = self._state
        if not s.record_selection:
            raise ValueError("make the cache with record_selection=True to get statistics")
        attended = int(s.attended.item())
        return {"decode_calls": s.decode_calls, "attended": attended,
                "available": s.available,
                "fraction": attended / s.available if s.available else 1.0}

    def __repr__(self) -> str:
        s = self._state
        return (f"HashAttnCache(layers={s.num_layers}, batch={s.batch}, "
                f"tokens={s.tokens[0] if s.tokens else 0}, blocks={s.num_blocks}, "
                f"budget={s.ctx.budget}, context={s.ctx!r})")


# ---- the functions transformers calls ------------------------------------------------------


def attention_forward(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                      scaling: Optional[float] = None, dropout: float = 0.0,
                      **kwargs: Any) -> Tuple[Any, None]:
    """The ``"hashattn"`` attention function (transformers' attention interface).

    query [B, Hq, q, D], key and value [B, Hkv, q, D]: the new tokens, post-RoPE, as
    ``HashAttnCache.update`` returned them; attention_mask: the 2D padding mask from
    :func:`mask_function` or None. Returns ([B, q, Hq, D], None).
    """
    state = _take_link(module, key)
    if state is None:
        raise RuntimeError(
            f"attn_implementation='{ATTN_IMPLEMENTATION}' needs a "
            "hashattn.transformers_backend.HashAttnCache as the model's cache: pass it to "
            "generate() or forward() as **cache_kwargs(model, cache) (past_key_values= or "
            "cache=, by transformers version). Without it (no cache, use_cache=False or "
            "another Cache class) the attention has no paged caches")
    layer = int(module.layer_idx)
    try:
        ctx = state.ctx
        if dropout and getattr(module, "training", False):
            raise ValueError(f"dropout = {dropout} in training mode: hashattn is for inference")
        if kwargs.get("sliding_window") is not None:
            raise ValueError(f"sliding_window = {kwargs['sliding_window']} is not supported")
        if kwargs.get("softcap") is not None:
            raise ValueError(f"softcap = {kwargs['softcap']} is not supported")
        if getattr(module, "is_causal", True) is False:
            raise ValueError("non-causal attention modules are not supported")
        if scaling is not None and not math.isclose(float(scaling), ctx.softmax_scale,
                                                    rel_tol=1e-6):
            raise ValueError(f"scaling = {scaling} but the context was made with "
                             f"{ctx.softmax_scale}")
        if query.dim() != 4 or query.shape[1] != ctx.num_q_heads or \
                key.shape[1] != ctx.num_kv_heads or query.shape[3] != ctx.head_dim:
            raise ValueError(f"query {list(query.shape)} / key {list(key.shape)}: expected "
                             f"[B, {ctx.num_q_heads}, q, {ctx.head_dim}] / "
                             f"[B, {ctx.num_kv_heads}, q, {ctx.head_dim}]")
        if query.dtype != state.dtype or query.device != state.device:
            raise ValueError(f"query is {query.dtype} on {query.device}, the cache was made "
                             f"for {state.dtype} on {state.device}")
        out = state.attend(layer, query, key, value, attention_mask)
    except Exception as e:
        state.broken = f"{type(e).__name__}: {e}"
        raise
    state.consumed[layer] = state.tokens[layer]
    return out, None


def mask_function(*args: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
    """The ``"hashattn"`` mask function: the plugin is causal by itself, so the only
    mask needed is the 2D padding mask [B, past + q] (bool), passed through as is."""
    return attention_mask


def register(name: str = ATTN_IMPLEMENTATION) -> None:
    """Register :func:`attention_forward` and :func:`mask_function` under ``name``
    (done at import under "hashattn"; calling it again is harmless)."""
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask_function)


def cache_kwargs(model: Any, cache: HashAttnCache) -> Dict[str, Any]:
    """``{name: cache}`` with the keyword the model's forward takes its cache by:
    ``cache`` where it exists (newer 5.x), else ``past_key_values``. For
    ``model.generate(..., **cache_kwargs(model, cache))`` and ``model(...)``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    return {"cache" if "cache" in params else "past_key_values": cache}


def compare_greedy(ref_tokens: Any, ref_logits: Sequence[Any], tokens: Any,
                   tie_tolerance: float = 0.0) -> Tuple[bool, str]:
    """Compare two greedy generations of one prompt batch (new tokens [B, n] each).

    Equal tokens pass. Otherwise, at each sequence's first difference, the reference's
    logits (``ref_logits[step][b]``) decide: a gap between the two tokens' logits of at
    most ``tie_tolerance`` is a near-tie (the two runs legitimately round differently),
    which passes; anything larger fails. Returns (ok, a one-line description).
    """
    ref = torch.as_tensor(ref_tokens).cpu()
    got = torch.as_tensor(tokens).cpu()
    if ref.shape != got.shape:
        return False, f"shapes differ: {list(ref.shape)} vs {list(got.shape)}"
    notes = []
    ok = True
    for b in range(ref.shape[0]):
        diff = (ref[b] != got[b]).nonzero()
        if diff.numel() == 0:
            continue
        i = int(diff[0])
        row = ref_logits[i][b].float().cpu()
        gap = float(row[ref[b, i]] - row[got[b, i]])
        tie = gap <= tie_tolerance
        ok = ok and tie
        notes.append(f"seq {b}: first difference at new token {i} ({int(ref[b, i])} vs "
                     f"{int(got[b, i])}), logit gap {gap:.4g} "
                     f"{'<=' if tie else '>'} {tie_tolerance:g}")
    return ok, "; ".join(notes) if notes else "all tokens equal"


register()
