"""hashattn: Python bindings of libhashattn (HashAttention on paged KV caches).

Pure Python (ctypes); libhashattn.so.1 is looked up on first use, not at import
(see :func:`library_path`). numpy is required, torch is optional: numpy arrays work with
CPU contexts, torch tensors with CPU and CUDA contexts.

    import numpy as np, hashattn
    ctx = hashattn.Context(num_layers=1, num_q_heads=8, num_kv_heads=2, head_dim=64,
                           dtype="float32", block_size=16)
    q, k = hashattn.random_weights(1, 8, 8, 64)
    ctx.bind_weights(q, k)
    key_cache, value_cache, sig_cache = ctx.allocate_caches(num_blocks=64)
    ctx.cache_write(0, keys, values, key_cache, value_cache, sig_cache, slot_mapping)
    out = ctx.decode(0, query, key_cache, value_cache, sig_cache, block_tables, seq_lens)

The ctypes mirror of every C struct is in :mod:`hashattn.abi`.
"""
from . import _abi as abi
from ._abi import HashSide, KVLayout, Op, Selection, SignatureLayout, Status
from ._dlpack import (Borrowed, DLDataType, DLDevice, DLTensor, Reinterpret, as_bfloat16,
                      bfloat16_bits_to_float32, borrow, float32_to_bfloat16_bits, to_float32)
from ._library import abi_version, candidates as library_candidates, has_cuda, library_path
from ._library import load as load_library
from ._library import version
from .context import Budget, Context
from .errors import (CommError, DeviceError, FormatError, HashAttnError, HashAttnIOError,
                     InternalError, InvalidArgumentError, LibraryNotFoundError, NotReadyError,
                     OutOfMemoryError, UnsupportedError, WorkspaceTooSmallError, error_for_status)
from .weights import MLP_PARTS, random_weights, read_metadata, read_weights, write_weights

__version__ = "1.2.0"  # the library release whose ABI (1.2) this package binds

__all__ = [
    "abi", "HashSide", "KVLayout", "Op", "Selection", "SignatureLayout", "Status",
    "Borrowed", "DLDataType", "DLDevice", "DLTensor", "Reinterpret", "as_bfloat16",
    "bfloat16_bits_to_float32", "borrow", "float32_to_bfloat16_bits", "to_float32",
    "abi_version", "library_candidates", "has_cuda", "library_path", "load_library", "version",
    "Budget", "Context",
    "CommError", "DeviceError", "FormatError", "HashAttnError", "HashAttnIOError",
    "InternalError", "InvalidArgumentError", "LibraryNotFoundError", "NotReadyError", "OutOfMemoryError",
    "UnsupportedError", "WorkspaceTooSmallError", "error_for_status",
    "MLP_PARTS", "random_weights", "read_metadata", "read_weights", "write_weights",
]
