"""The :class:`Context`: one model's attention shape on one device, with its hash weights.

Every run-path method takes numpy arrays (CPU contexts), torch tensors (CPU or
CUDA, matching the context's device) or :class:`hashattn.Reinterpret` wrappers, and
passes them to the library as borrowed ``DLTensor`` views: nothing is copied, and
outputs are written in place. Outputs that are not given are allocated like the
main input (same library: numpy or torch; same device).
"""
from __future__ import annotations

import ctypes
import dataclasses
import math
import os
import sys
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _abi
from ._abi import HashSide, KVLayout, Op, Selection, SignatureLayout
from ._dlpack import (KDLCPU, KDLCUDA, Borrowed, DLDevice, Reinterpret, TensorSlots,
                      _is_torch_tensor, borrow, dtype_name, parse_dtype)
from ._library import library_path, load
from .errors import UnsupportedError, error_for_status
from .weights import MLP_PARTS

__all__ = ["Budget", "Context"]

Array = Any  # numpy.ndarray | torch.Tensor | Reinterpret
DeviceLike = Union[str, int, Tuple[int, int], Any]


@dataclasses.dataclass
class Budget:
    """Which tokens a decode step attends to (``hashattn_budget_t``).

    sink ``[0, sink_tokens)`` and recent ``[n - recent_tokens, n)`` always; the
    ``heavy_count`` best candidates between them (or ``floor(heavy_fraction * n)``
    when ``heavy_count`` is -1), ties to the newer token; everything when
    ``n <= sink + recent + heavy``.
    """

    sink_tokens: int = 128
    recent_tokens: int = 128
    heavy_count: int = -1
    heavy_fraction: float = 0.0625

    def to_c(self) -> _abi.Budget:
        """The ABI struct, with struct_size set."""
        return _abi.Budget.init(sink_tokens=int(self.sink_tokens),
                                recent_tokens=int(self.recent_tokens),
                                heavy_count=int(self.heavy_count),
                                heavy_fraction=float(self.heavy_fraction))

    @classmethod
    def of(cls, value: Union["Budget", Mapping[str, Any], _abi.Budget]) -> "Budget":
        """A Budget from a Budget, a dict of its fields or the ctypes struct."""
        if isinstance(value, Budget):
            return value
        if isinstance(value, _abi.Budget):
            return cls(value.sink_tokens, value.recent_tokens, value.heavy_count,
                       value.heavy_fraction)
        if isinstance(value, Mapping):
            return cls(**dict(value))
        raise TypeError(f"budget: expected Budget or dict, got {type(value).__name__}")


def _enum(value: Any, enum_cls: Any, name: str) -> int:
    if isinstance(value, str):
        key = value.upper().replace("-", "_")
        try:
            return int(enum_cls[key])
        except KeyError:
            choices = ", ".join(m.name.lower() for m in enum_cls)
            raise ValueError(f"{name} = {value!r}; expected one of {choices}") from None
    return int(value)


def _parse_device(device: DeviceLike) -> Tuple[int, int]:
    """(DLDeviceType, id) of "cpu", "cuda", "cuda:N", an int N (CUDA), a torch.device
    or a (type, id) pair."""
    if isinstance(device, tuple):
        return int(device[0]), int(device[1])
    if isinstance(device, int):
        return KDLCUDA, device
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(device, torch.device):
        device = str(device)
    if isinstance(device, str):
        kind, _, index = device.partition(":")
        if kind == "cpu":
            return KDLCPU, int(index or 0)
        if kind == "cuda":
            if index:
                return KDLCUDA, int(index)
            if torch is not None and torch.cuda.is_available():
                return KDLCUDA, int(torch.cuda.current_device())
            return KDLCUDA, 0
    raise ValueError(f"device = {device!r}; expected 'cpu', 'cuda', 'cuda:N' or a torch.device")


def _dim(obj: Any, i: int) -> int:
    """obj.shape[i], or 0 when obj is None or has fewer dimensions (the library then
    reports the bad rank by name)."""
    if obj is None:
        return 0
    s = obj.shape
    return int(s[i]) if len(s) > i else 0


_local = threading.local()


def _slots() -> TensorSlots:
    """This thread's preallocated DLTensors for run-path calls."""
    s = getattr(_local, "slots", None)
    if s is None:
        s = _local.slots = TensorSlots(16)
    return s


class _Keep:
    """The borrowed tensors of one call; alive until the call returns."""

    def __init__(self) -> None:
        self.items: List[Borrowed] = []

    def __call__(self, obj: Any, name: str) -> Any:
        b = borrow(obj, name)
        if b is None:
            return None
        self.items.append(b)
        return b.pointer


class Context:
    """A libhashattn context (``hashattn_context_t``) and a workspace cache.

    Arguments mirror ``hashattn_context_config_t``; strings are accepted for the
    enumerations (``kv_layout="HND"``, ``selection="per_head"``,
    ``signature_layout="per_kv_head"``), dtypes as names, numpy or torch dtypes,
    devices as ``"cpu"``, ``"cuda:0"`` or a ``torch.device``. Defaults are the
    header's: block_size 16, bfloat16, CPU, NHD, mlp_width 128, group selection,
    per-query-head signatures, scale 1/sqrt(D), budget 128 + 128 + n/16, and
    ``dense_below=0``: on CUDA, sequences too short for the sparse step to pay
    decode densely (-1: never; N: below N tokens; docs/abi.md).

    Use it as a context manager or call :meth:`close`; the library context is also
    freed when the object is garbage collected.
    """

    def __init__(self, num_layers: int, num_q_heads: int, num_kv_heads: int, head_dim: int, *,
                 block_size: int = 16, dtype: Any = "bfloat16", device: DeviceLike = "cpu",
                 kv_layout: Union[str, int] = "NHD", mlp_width: int = 128,
                 selection: Union[str, int] = "group",
                 signature_layout: Union[str, int] = "per_query_head",
                 softmax_scale: float = 0.0,
                 budget: Optional[Union[Budget, Mapping[str, Any]]] = None,
                 hash_bits: int = 32, dense_below: int = 0) -> None:
        self._api = load()
        self._ctx = ctypes.c_void_p()
        dev = _parse_device(device)
        cfg = _abi.ContextConfig.init(
            num_layers=int(num_layers), num_q_heads=int(num_q_heads),
            num_kv_heads=int(num_kv_heads), head_dim=int(head_dim), block_size=int(block_size),
            dtype=parse_dtype(dtype), device=DLDevice(dev[0], dev[1]),
            kv_layout=_enum(kv_layout, KVLayout, "kv_layout"), hash_bits=int(hash_bits),
            mlp_width=int(mlp_width), selection=_enum(selection, Selection, "selection"),
            signature_layout=_enum(signature_layout, SignatureLayout, "signature_layout"),
            softmax_scale=float(softmax_scale), dense_below=int(dense_below),
            budget=(Budget.of(budget) if budget is not None else Budget()).to_c())
        status = self._api.context_create(ctypes.byref(cfg), ctypes.byref(self._ctx))
        if status != 0:
            self._ctx = ctypes.c_void_p()
            raise error_for_status(status, self._api.last_error(None).decode(errors="replace"),
                                   self._status_name(status))
        self.config = cfg
        self._abi_minor = int(self._api.abi_minor)
        self.dtype: str = dtype_name(dtype)
        self.device: Tuple[int, int] = dev
        self.budget: Budget = Budget.of(cfg.budget)
        self._ws: Any = None
        self._ws_ptr: Optional[int] = None
        self._ws_size = 0
        self._ws_needs: Dict[Tuple[int, int, int, int], int] = {}
        self._budgets: Dict[Tuple[Any, ...], Any] = {}

    # ---- life cycle --------------------------------------------------------------

    @classmethod
    def from_weights(cls, path: Union[str, os.PathLike], **config: Any) -> "Context":
        """A context shaped by a weight file's metadata, with its weights loaded.

        The file gives num_layers, num_q_heads, num_kv_heads, head_dim, mlp_width and
        signature_layout; ``config`` gives the rest (block_size, dtype, device, ...).
        """
        from .weights import read_metadata  # noqa: PLC0415

        meta = read_metadata(path)
        shape = {k: int(meta[k]) for k in ("num_layers", "num_q_heads", "num_kv_heads",
                                           "head_dim", "mlp_width", "hash_bits")}
        shape["signature_layout"] = meta["signature_layout"]
        shape.update(config)
        ctx = cls(**shape)
        ctx.load_weights(path)
        return ctx

    def close(self) -> None:
        """Free the library context (waits for the device first on CUDA contexts)."""
        if self._ctx:
            if self.device[0] == KDLCUDA:
                torch = sys.modules.get("torch")
                if torch is not None and torch.cuda.is_available():
                    torch.cuda.synchronize(self.device[1])
            self._api.context_destroy(self._ctx)
            self._ctx = ctypes.c_void_p()
        self._ws = None
        self._ws_ptr = None
        self._ws_size = 0

    def __enter__(self) -> "Context":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_ctx", None):
                self.close()
        except Exception:  # interpreter shutdown: nothing sensible to do
            pass

    def __repr__(self) -> str:
        c = self.config
        return (f"Context(num_layers={c.num_layers}, num_q_heads={c.num_q_heads}, "
                f"num_kv_heads={c.num_kv_heads}, head_dim={c.head_dim}, "
                f"block_size={c.block_size}, dtype={self.dtype!r}, device={self.device_name!r}, "
                f"kv_layout={KVLayout(c.kv_layout).name!r}, mlp_width={c.mlp_width}, "
                f"selection={Selection(c.selection).name.lower()!r}, "
                f"signature_layout={SignatureLayout(c.signature_layout).name.lower()!r})")

    # ---- shape ------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return int(self.config.num_layers)

    @property
    def num_q_heads(self) -> int:
        return int(self.config.num_q_heads)

    @property
    def num_kv_heads(self) -> int:
        return int(self.config.num_kv_heads)

    @property
    def head_dim(self) -> int:
        return int(self.config.head_dim)

    @property
    def block_size(self) -> int:
        return int(self.config.block_size)

    @property
    def mlp_width(self) -> int:
        return int(self.config.mlp_width)

    @property
    def kv_layout(self) -> KVLayout:
        return KVLayout(self.config.kv_layout)

    @property
    def selection(self) -> Selection:
        return Selection(self.config.selection)

    @property
    def signature_layout(self) -> SignatureLayout:
        return SignatureLayout(self.config.signature_layout)

    @property
    def group(self) -> int:
        """G = Hq / Hkv."""
        return self.num_q_heads // self.num_kv_heads

    @property
    def num_sig_heads(self) -> int:
        """Hsig: Hq with per-query-head signatures, Hkv with per-KV-head ones."""
        return (self.num_kv_heads if self.signature_layout == SignatureLayout.PER_KV_HEAD
                else self.num_q_heads)

    @property
    def num_sel_heads(self) -> int:
        """Hsel, the rows of decode's selection outputs: Hkv (group) or Hq (per head)."""
        return self.num_kv_heads if self.selection == Selection.GROUP else self.num_q_heads

    @property
    def softmax_scale(self) -> float:
        s = float(self.config.softmax_scale)
        return s if s > 0 else 1.0 / math.sqrt(self.head_dim)

    @property
    def device_name(self) -> str:
        return "cpu" if self.device[0] == KDLCPU else f"cuda:{self.device[1]}"

    def kv_cache_shape(self, num_blocks: int) -> Tuple[int, int, int, int]:
        """Shape of a key or value cache of ``num_blocks`` blocks in this layout."""
        if self.kv_layout == KVLayout.HND:
            return (num_blocks, self.num_kv_heads, self.block_size, self.head_dim)
        return (num_blocks, self.block_size, self.num_kv_heads, self.head_dim)

    def signature_cache_shape(self, num_blocks: int) -> Tuple[int, int, int]:
        """Shape of a signature cache: [num_blocks, Hsig, block_size] uint32."""
        return (num_blocks, self.num_sig_heads, self.block_size)

    def allocate_caches(self, num_blocks: int, *, backend: Optional[str] = None
                        ) -> Tuple[Array, Array, Array]:
        """Zeroed (key_cache, value_cache, signature_cache) for ``num_blocks`` blocks.

        ``backend`` is "numpy" (the default on CPU contexts) or "torch" (the default,
        and the only choice, on CUDA contexts). A standalone host's convenience; a
        serving stack passes its own caches.
        """
        backend = backend or ("numpy" if self.device[0] == KDLCPU else "torch")
        kv = self.kv_cache_shape(num_blocks)
        sig = self.signature_cache_shape(num_blocks)
        if backend == "numpy":
            if self.device[0] != KDLCPU:
                raise ValueError("numpy caches need a CPU context")
            return (_np_empty(kv, self.dtype, zero=True), _np_empty(kv, self.dtype, zero=True),
                    np.zeros(sig, np.uint32))
        if backend == "torch":
            import torch

            dev = torch.device(self.device_name)
            return (torch.zeros(kv, dtype=getattr(torch, self.dtype), device=dev),
                    torch.zeros(kv, dtype=getattr(torch, self.dtype), device=dev),
                    _torch_zeros_u32(sig, dev))
        raise ValueError(f"backend = {backend!r}; expected 'numpy' or 'torch'")

    # ---- errors -----------------------------------------------------------------

    def _status_name(self, status: int) -> str:
        return self._api.status_string(int(status)).decode()

    def _check(self, status: int) -> None:
        if status != 0:
            msg = self._api.last_error(self._ctx).decode(errors="replace")
            raise error_for_status(status, msg, self._status_name(status))

    @property
    def last_error(self) -> str:
        """The library's last error message on this context ("" if none)."""
        return self._api.last_error(self._ctx).decode(errors="replace")

    def _require_open(self) -> None:
        if not self._ctx:
            raise ValueError("the context is closed")

    def _require_minor(self, minor: int, what: str) -> None:
        """Refuse a feature of ABI 1.``minor`` on an older library, before calling it (an
        older library would refuse the struct's non-zero tail without naming the field)."""
        if self._abi_minor < minor:
            raise UnsupportedError(
                f"{what} needs ABI {_abi.ABI_MAJOR}.{minor}; {library_path()} has ABI "
                f"{self._api.abi_major}.{self._abi_minor}, which is older")

    # ---- weights ----------------------------------------------------------------

    def bind_weights(self, query: Mapping[str, Array], key: Mapping[str, Array]) -> None:
        """Copy hash MLP weights into the context (replacing earlier ones).

        ``query`` and ``key`` map w1, b1, w2, b2, w3, b3 to arrays or CPU tensors of
        all layers: w1 [L, H, m, D], b1 [L, H, m], w2 [L, H, m, m], b2 [L, H, m],
        w3 [L, H, 32, m], b3 [L, H, 32]; H = Hq for the query side, Hsig for the key
        side; float32 or bfloat16 (torch.bfloat16, or ``hashattn.as_bfloat16``).
        """
        self._require_open()
        keep = _Keep()
        args = _abi.WeightsBindArgs.init()
        for side_name, side, src in (("query", args.query, query), ("key", args.key, key)):
            extra = set(src) - set(MLP_PARTS)
            if extra:
                raise ValueError(f"{side_name}: unknown weight names {sorted(extra)}; "
                                 f"expected {', '.join(MLP_PARTS)}")
            for part in MLP_PARTS:
                ptr = keep(src.get(part), f"{side_name}.{part}")
                if ptr is not None:
                    setattr(side, part, ptr)
        self._check(self._api.weights_bind(self._ctx, ctypes.byref(args)))

    def load_weights(self, path: Union[str, os.PathLike]) -> None:
        """Load hash weights from a safetensors file (see :func:`hashattn.write_weights`)."""
        self._require_open()
        args = _abi.WeightsLoadArgs.init(path=os.fsencode(os.fspath(path)))
        self._check(self._api.weights_load(self._ctx, ctypes.byref(args)))

    # ---- workspace --------------------------------------------------------------

    def workspace_size(self, op: Union[Op, str, int], *, max_num_seqs: int = 0,
                       max_num_tokens: int = 0, max_blocks_per_seq: int = 0) -> int:
        """Bytes of workspace that calls of ``op`` within these bounds need."""
        self._require_open()
        args = _abi.WorkspaceArgs.init(op=_enum(op, Op, "op"), max_num_seqs=int(max_num_seqs),
                                       max_num_tokens=int(max_num_tokens),
                                       max_blocks_per_seq=int(max_blocks_per_seq))
        out = ctypes.c_size_t()
        self._check(self._api.workspace_size(self._ctx, ctypes.byref(args), ctypes.byref(out)))
        return int(out.value)

    def reserve_workspace(self, op: Union[Op, str, int], *, max_num_seqs: int = 0,
                          max_num_tokens: int = 0, max_blocks_per_seq: int = 0) -> int:
        """Grow the cached workspace to serve ``op`` within these bounds; returns its size.

        Call it before capturing a CUDA graph, so that no allocation happens during
        capture. One cached workspace serves every operation of this context on one
        stream at a time; pass ``workspace=`` to the calls for other streams.
        """
        need = self.workspace_size(op, max_num_seqs=max_num_seqs, max_num_tokens=max_num_tokens,
                                   max_blocks_per_seq=max_blocks_per_seq)
        self._grow_workspace(need)
        return self._ws_size

    @property
    def workspace(self) -> Any:
        """The cached workspace buffer (numpy uint8 array or torch uint8 tensor), or None."""
        return self._ws

    def _grow_workspace(self, need: int) -> None:
        if need <= self._ws_size:
            return
        if self.device[0] == KDLCPU:
            buf = np.empty(need, np.uint8)
            ptr = buf.__array_interface__["data"][0]
        else:
            import torch

            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError(
                    f"the workspace needs {need} bytes (has {self._ws_size}) during CUDA graph "
                    f"capture; call reserve_workspace() with the graph's bounds before capturing")
            buf = torch.empty(need, dtype=torch.uint8, device=self.device_name)
            ptr = buf.data_ptr()
        self._ws, self._ws_ptr, self._ws_size = buf, int(ptr), need

    def _workspace(self, workspace: Any, op: Op, **bounds: int) -> Tuple[Optional[int], int, Any]:
        """(pointer, size, keep-alive) of the workspace for one call."""
        if workspace is not None:
            if _is_torch_tensor(workspace):
                return int(workspace.data_ptr()), int(workspace.numel() * workspace.element_size()), workspace
            if isinstance(workspace, np.ndarray):
                return int(workspace.__array_interface__["data"][0]), int(workspace.nbytes), workspace
            raise TypeError("workspace: expected a numpy array or torch tensor")
        key = (op, bounds.get("max_num_seqs", 0), bounds.get("max_num_tokens", 0),
               bounds.get("max_blocks_per_seq", 0))
        need = self._ws_needs.get(key)
        if need is None:
            need = self.workspace_size(op, **bounds)
            if len(self._ws_needs) > 4096:
                self._ws_needs.clear()
            self._ws_needs[key] = need
        self._grow_workspace(need)
        return self._ws_ptr, self._ws_size, self._ws

    def _stream(self, stream: Any) -> Optional[int]:
        if stream is not None:
            s = getattr(stream, "cuda_stream", stream)
            return int(s) or None
        if self.device[0] == KDLCUDA:
            torch = sys.modules.get("torch")
            if torch is not None:
                return int(torch.cuda.current_stream(self.device[1]).cuda_stream) or None
        return None

    def _c_budget(self, budget: Any) -> Any:
        """A ``hashattn_budget_t*`` for a call (None: the context's), cached by value."""
        if budget is None:
            return None
        b = Budget.of(budget)
        key = (b.sink_tokens, b.recent_tokens, b.heavy_count, b.heavy_fraction)
        found = self._budgets.get(key)
        if found is None:
            if len(self._budgets) > 256:
                self._budgets.clear()
            found = self._budgets[key] = ctypes.pointer(b.to_c())
        return found

    # ---- run path -----------------------------------------------------------------

    def cache_write(self, layer: int, key: Array, value: Optional[Array], key_cache: Optional[Array],
                    value_cache: Optional[Array], signature_cache: Optional[Array],
                    slot_mapping: Array, *, signatures_only: bool = False,
                    query: Optional[Array] = None, query_signatures: Optional[Array] = None,
                    workspace: Any = None, stream: Any = None) -> Any:
        """Write new tokens' K, V (unless ``signatures_only``) and key signatures
        (unless ``signature_cache`` is None) at ``slot_mapping`` [num_tokens] int64;
        negative slots are skipped. key, value: [num_tokens, Hkv, D].

        ABI 1.2: with ``query`` [num_queries, Hq, D] (this step's decode queries; the
        row count need not be num_tokens) the call also writes ``query_signatures``
        [num_queries, Hq] uint32, bit for bit what ``hash(layer, query, "query")``
        gives, in the same work as the keys'; pass them to :meth:`decode` so that it
        does not hash the queries again. ``query_signatures`` is allocated like
        ``query`` when not given; given without ``query`` it is refused
        (InvalidArgumentError). Returns ``query_signatures`` (None without ``query``).
        A library older than 1.2 raises UnsupportedError.
        """
        self._require_open()
        if query is not None or query_signatures is not None:
            self._require_minor(2, "cache_write: query" if query is not None
                                else "cache_write: query_signatures")
            if query is not None and query_signatures is None:
                query_signatures = _empty_like(query, (_dim(query, 0), self.num_q_heads),
                                               "uint32")
        put = _slots().put
        # the header leaves open whether the bound counts query rows: cover both
        ws, ws_size, ws_keep = self._workspace(workspace, Op.CACHE_WRITE,
                                               max_num_tokens=max(_dim(key, 0), _dim(query, 0)))
        args = _abi.CacheWriteArgs.init(
            flags=_abi.CACHE_WRITE_SIGNATURES_ONLY if signatures_only else 0, layer=int(layer),
            key=put(0, key, "key"), value=put(1, value, "value"),
            key_cache=put(2, key_cache, "key_cache"),
            value_cache=put(3, value_cache, "value_cache"),
            signature_cache=put(4, signature_cache, "signature_cache"),
            slot_mapping=put(5, slot_mapping, "slot_mapping"),
            workspace=ws, workspace_size=ws_size, stream=self._stream(stream),
            query=put(6, query, "query"),
            query_signatures=put(7, query_signatures, "query_signatures"))
        self._check(self._api.cache_write(self._ctx, ctypes.byref(args)))
        del ws_keep
        return query_signatures

    def decode(self, layer: int, query: Array, key_cache: Array, value_cache: Array,
               signature_cache: Optional[Array], block_tables: Array, seq_lens: Array, *,
               output: Optional[Array] = None,
               budget: Optional[Union[Budget, Mapping[str, Any]]] = None,
               dense: bool = False, selected_indices: Optional[Array] = None,
               selected_counts: Optional[Array] = None, return_selection: bool = False,
               query_signatures: Optional[Array] = None,
               workspace: Any = None, stream: Any = None) -> Any:
        """One decode step per sequence; returns ``output`` [num_seqs, Hq, D].

        query [num_seqs, Hq, D]; block_tables [num_seqs, max_blocks] int32; seq_lens
        [num_seqs] int32 (the current token included, already in the caches).
        ``budget`` overrides the context's for this call; ``dense`` attends to every
        token. ``selected_indices`` [num_seqs, Hsel, cap] and ``selected_counts``
        [num_seqs, Hsel] int32 receive the attended positions when given. With
        ``return_selection`` the missing ones are allocated (cap = max_blocks *
        block_size, unused entries -1) and ``(output, indices, counts)`` is returned.

        ABI 1.2: ``query_signatures`` [num_seqs, Hq] uint32 (from
        ``cache_write(..., query=query)`` or ``hash(layer, query, "query")``) are used
        instead of hashing ``query``; the result is the same when they are query's.
        Not read with ``dense``. A library older than 1.2 raises UnsupportedError.
        """
        self._require_open()
        if query_signatures is not None:
            self._require_minor(2, "decode: query_signatures")
        num_seqs = _dim(query, 0)
        if output is None:
            output = _empty_like(query, (num_seqs, self.num_q_heads, self.head_dim), self.dtype)
        if return_selection:
            cap = _dim(block_tables, 1) * self.block_size
            if selected_indices is None:
                selected_indices = _full_like(query, (num_seqs, self.num_sel_heads, cap), -1)
            if selected_counts is None:
                selected_counts = _full_like(query, (num_seqs, self.num_sel_heads), 0)
        put = _slots().put
        ws, ws_size, ws_keep = self._workspace(workspace, Op.DECODE, max_num_seqs=num_seqs,
                                               max_blocks_per_seq=_dim(block_tables, 1))
        c_budget = self._c_budget(budget)
        args = _abi.DecodeArgs.init(
            flags=_abi.DECODE_DENSE if dense else 0, layer=int(layer),
            query=put(0, query, "query"), key_cache=put(1, key_cache, "key_cache"),
            value_cache=put(2, value_cache, "value_cache"),
            signature_cache=put(3, signature_cache, "signature_cache"),
            block_tables=put(4, block_tables, "block_tables"),
            seq_lens=put(5, seq_lens, "seq_lens"), output=put(6, output, "output"),
            budget=c_budget,
            selected_indices=put(7, selected_indices, "selected_indices"),
            selected_counts=put(8, selected_counts, "selected_counts"),
            workspace=ws, workspace_size=ws_size, stream=self._stream(stream),
            query_signatures=put(9, query_signatures, "query_signatures"))
        self._check(self._api.decode(self._ctx, ctypes.byref(args)))
        del ws_keep
        if return_selection:
            return output, selected_indices, selected_counts
        return output

    def prefill(self, layer: int, query: Array, key_cache: Array, value_cache: Array,
                block_tables: Array, seq_lens: Array, query_start_loc: Array, *,
                output: Optional[Array] = None, workspace: Any = None, stream: Any = None) -> Any:
        """Dense causal attention for chunks of new tokens; returns ``output``
        [num_tokens, Hq, D]. Sequence s owns query rows [query_start_loc[s],
        query_start_loc[s+1]), the last tokens of its seq_lens[s] cached ones."""
        self._require_open()
        num_tokens = _dim(query, 0)
        if output is None:
            output = _empty_like(query, (num_tokens, self.num_q_heads, self.head_dim), self.dtype)
        put = _slots().put
        ws, ws_size, ws_keep = self._workspace(
            workspace, Op.PREFILL, max_num_seqs=max(_dim(query_start_loc, 0) - 1, 0),
            max_num_tokens=num_tokens, max_blocks_per_seq=_dim(block_tables, 1))
        args = _abi.PrefillArgs.init(
            layer=int(layer), query=put(0, query, "query"),
            key_cache=put(1, key_cache, "key_cache"), value_cache=put(2, value_cache, "value_cache"),
            block_tables=put(3, block_tables, "block_tables"),
            seq_lens=put(4, seq_lens, "seq_lens"),
            query_start_loc=put(5, query_start_loc, "query_start_loc"),
            output=put(6, output, "output"), workspace=ws, workspace_size=ws_size,
            stream=self._stream(stream))
        self._check(self._api.prefill(self._ctx, ctypes.byref(args)))
        del ws_keep
        return output

    def hash(self, layer: int, input: Array, side: Union[HashSide, str, int] = "query", *,
             signatures: Optional[Array] = None, workspace: Any = None,
             stream: Any = None) -> Any:
        """Signatures of ``input`` under one side's hash MLPs (uint32).

        Query side: input [n, Hq, D] -> [n, Hq]; key side: input [n, Hkv, D] (keys)
        -> [n, Hsig].
        """
        self._require_open()
        side_v = _enum(side, HashSide, "side")
        n = _dim(input, 0)
        if signatures is None:
            heads = self.num_q_heads if side_v == HashSide.QUERY else self.num_sig_heads
            signatures = _empty_like(input, (n, heads), "uint32")
        put = _slots().put
        ws, ws_size, ws_keep = self._workspace(workspace, Op.HASH, max_num_tokens=n)
        args = _abi.HashArgs.init(layer=int(layer), side=side_v, input=put(0, input, "input"),
                                  signatures=put(1, signatures, "signatures"), workspace=ws,
                                  workspace_size=ws_size, stream=self._stream(stream))
        self._check(self._api.hash(self._ctx, ctypes.byref(args)))
        del ws_keep
        return signatures


# ---- allocation like an operand -------------------------------------------------------


def _np_empty(shape: Sequence[int], dtype: str, zero: bool = False) -> Any:
    make = np.zeros if zero else np.empty
    if dtype == "bfloat16":
        return Reinterpret(make(shape, np.uint16), "bfloat16")
    return make(shape, np.dtype(dtype))


def _torch_zeros_u32(shape: Sequence[int], device: Any) -> Any:
    import torch

    if hasattr(torch, "uint32"):
        return torch.zeros(shape, dtype=torch.uint32, device=device)
    return Reinterpret(torch.zeros(shape, dtype=torch.int32, device=device), "uint32")


def _empty_like(ref: Any, shape: Sequence[int], dtype: str) -> Any:
    """An uninitialised array of ``dtype`` in ref's library and on ref's device."""
    base = ref.array if isinstance(ref, Reinterpret) else ref
    if _is_torch_tensor(base):
        import torch

        tdt = getattr(torch, dtype, None)
        if tdt is None and dtype == "uint32":
            return Reinterpret(torch.empty(shape, dtype=torch.int32, device=base.device), "uint32")
        return torch.empty(shape, dtype=tdt, device=base.device)
    if dtype == "bfloat16" and isinstance(base, np.ndarray) and base.dtype.name == "bfloat16":
        return np.empty(shape, base.dtype)  # ml_dtypes
    return _np_empty(shape, dtype)


def _full_like(ref: Any, shape: Sequence[int], fill: int) -> Any:
    """An int32 array filled with ``fill`` in ref's library and on ref's device."""
    base = ref.array if isinstance(ref, Reinterpret) else ref
    if _is_torch_tensor(base):
        import torch

        return torch.full(shape, fill, dtype=torch.int32, device=base.device)
    return np.full(shape, fill, np.int32)
