"""ctypes mirror of ``abi/hashattn/hashattn.h`` (ABI 1.2), field for field.

Every args struct has an ``init(**fields)`` class method that plays the role of the
header's ``HASHATTN_..._INIT`` macro: it sets ``struct_size`` to ``ctypes.sizeof`` of
the struct and every field to the header's default, then applies ``fields``.

Fields appended in a later minor are marked with it (``# 1.2``). A library of an
older minor accepts these longer structs as long as the fields it does not know are
zero (NULL); :class:`hashattn.Context` refuses to set them for such a library.

Keep this file in step with the header: python/tests/test_abi.py
(``test_struct_layout_matches_header``) compiles a C program against the header and
compares every offset and size with these classes.
"""
from __future__ import annotations

import ctypes
import enum
from typing import Any

from ._dlpack import KDLBFLOAT, KDLCPU, DLDataType, DLDevice, DLTensor

ABI_MAJOR = 1
ABI_MINOR = 2

_size_t = ctypes.c_size_t
_i32 = ctypes.c_int32
_u32 = ctypes.c_uint32
_i64 = ctypes.c_int64
_f32 = ctypes.c_float
_vp = ctypes.c_void_p
_PT = ctypes.POINTER(DLTensor)


class Status(enum.IntEnum):
    """``hashattn_status_t``."""

    OK = 0
    INVALID_ARGUMENT = 1
    UNSUPPORTED = 2
    OUT_OF_MEMORY = 3
    WORKSPACE_TOO_SMALL = 4
    NOT_READY = 5
    IO_ERROR = 6
    FORMAT_ERROR = 7
    DEVICE_ERROR = 8
    INTERNAL = 9
    COMM_ERROR = 10  # 1.1


class KVLayout(enum.IntEnum):
    """``hashattn_kv_layout_t``: NHD = [blocks, block_size, Hkv, D], HND = [blocks, Hkv, block_size, D]."""

    NHD = 0
    HND = 1


class Selection(enum.IntEnum):
    """``hashattn_selection_t``."""

    PER_HEAD = 0
    GROUP = 1


class SignatureLayout(enum.IntEnum):
    """``hashattn_signature_layout_t``."""

    PER_QUERY_HEAD = 0
    PER_KV_HEAD = 1


class HashSide(enum.IntEnum):
    """``hashattn_hash_side_t``."""

    QUERY = 0
    KEY = 1


class Op(enum.IntEnum):
    """``hashattn_op_t``: which operation ``workspace_size`` is asked about."""

    CACHE_WRITE = 0
    DECODE = 1
    PREFILL = 2
    HASH = 3


CACHE_WRITE_SIGNATURES_ONLY = 1 << 0
DECODE_DENSE = 1 << 0


class _Args(ctypes.Structure):
    """Base of the args structs: ``init`` fills ``struct_size`` and the defaults."""

    _defaults_: dict = {}

    @classmethod
    def init(cls, **fields: Any) -> Any:
        names = cls.__dict__.get("_names_")
        if names is None:
            names = frozenset(f[0] for f in cls._fields_)
            cls._names_ = names
        if not names.issuperset(fields):
            raise AttributeError(f"{cls.__name__} has no field(s) {sorted(set(fields) - names)}")
        for k, v in cls._defaults_.items():
            if k not in fields:
                fields[k] = v() if callable(v) else v
        s = cls(**fields)
        s.struct_size = ctypes.sizeof(cls)
        return s


class Budget(_Args):
    """``hashattn_budget_t``."""

    _fields_ = [
        ("struct_size", _size_t),
        ("sink_tokens", _i32),
        ("recent_tokens", _i32),
        ("heavy_count", _i32),
        ("heavy_fraction", _f32),
    ]
    _defaults_ = {"sink_tokens": 128, "recent_tokens": 128, "heavy_count": -1,
                  "heavy_fraction": 0.0625}


class ContextConfig(_Args):
    """``hashattn_context_config_t``."""

    _fields_ = [
        ("struct_size", _size_t),
        ("flags", _u32),
        ("num_layers", _i32),
        ("num_q_heads", _i32),
        ("num_kv_heads", _i32),
        ("head_dim", _i32),
        ("block_size", _i32),
        ("dtype", DLDataType),
        ("device", DLDevice),
        ("kv_layout", _i32),
        ("hash_bits", _i32),
        ("mlp_width", _i32),
        ("selection", _i32),
        ("signature_layout", _i32),
        ("softmax_scale", _f32),
        ("budget", Budget),
        # 1.1
        ("tp_rank", _i32),
        ("tp_size", _i32),
        ("dense_below", _i32),
    ]
    _defaults_ = {
        "flags": 0, "num_layers": 0, "num_q_heads": 0, "num_kv_heads": 0, "head_dim": 0,
        "block_size": 16, "dtype": lambda: DLDataType(KDLBFLOAT, 16, 1),
        "device": lambda: DLDevice(KDLCPU, 0), "kv_layout": KVLayout.NHD, "hash_bits": 32,
        "mlp_width": 128, "selection": Selection.GROUP,
        "signature_layout": SignatureLayout.PER_QUERY_HEAD, "softmax_scale": 0.0,
        "budget": Budget.init, "tp_rank": 0, "tp_size": 0, "dense_below": 0,
    }


class MlpWeights(_Args):
    """``hashattn_mlp_weights_t``: six ``const DLTensor *``, [L, H, ...] each."""

    _fields_ = [
        ("struct_size", _size_t),
        ("w1", _PT),
        ("b1", _PT),
        ("w2", _PT),
        ("b2", _PT),
        ("w3", _PT),
        ("b3", _PT),
    ]


class WeightsBindArgs(_Args):
    """``hashattn_weights_bind_args_t``."""

    _fields_ = [
        ("struct_size", _size_t),
        ("flags", _u32),
        ("query", MlpWeights),
        ("key", MlpWeights),
    ]
    _defaults_ = {"flags": 0, "query": MlpWeights.init, "key": MlpWeights.init}


class WeightsLoadArgs(_Args):
    """``hashattn_weights_load_args_t``."""

    _fields_ = [
        ("struct_size", _size_t),
        ("flags", _u32),
        ("path", ctypes.c_char_p),
    ]


class WorkspaceArgs(_Args):
    """``hashattn_workspace_args_t``."""

    _fields_ = [
        ("struct_size", _size_t),
        ("op", _i32),
        ("max_num_seqs", _i32),
        ("max_num_tokens", _i64),
        ("max_blocks_per_seq", _i32),
    ]


class CacheWriteArgs(_Args):
    """``hashattn_cache_write_args_t``."""

    _fields_ = [
        ("struct_size", _size_t),
        ("flags", _u32),
        ("layer", _i32),
        ("key", _PT),
        ("value", _PT),
        ("key_cache", _PT),
        ("value_cache", _PT),
        ("signature_cache", _PT),
        ("slot_mapping", _PT),
        ("workspace", _vp),
        ("workspace_size", _size_t),
        ("stream", _vp),
        # 1.2: the step's queries, hashed in the same work (both or neither)
        ("query", _PT),
        ("query_signatures", _PT),
    ]


class DecodeArgs(_Args):
    """``hashattn_decode_args_t``."""

    _fields_ = [
        ("struct_size", _size_t),
        ("flags", _u32),
        ("layer", _i32),
        ("query", _PT),
        ("key_cache", _PT),
        ("value_cache", _PT),
        ("signature_cache", _PT),
        ("block_tables", _PT),
        ("seq_lens", _PT),
        ("output", _PT),
        ("budget", ctypes.POINTER(Budget)),
        ("selected_indices", _PT),
        ("selected_counts", _PT),
        ("workspace", _vp),
        ("workspace_size", _size_t),
        ("stream", _vp),
        # 1.2: the queries' signatures (NULL: decode hashes query)
        ("query_signatures", _PT),
    ]


class PrefillArgs(_Args):
    """``hashattn_prefill_args_t``."""

    _fields_ = [
        ("struct_size", _size_t),
        ("flags", _u32),
        ("layer", _i32),
        ("query", _PT),
        ("key_cache", _PT),
        ("value_cache", _PT),
        ("block_tables", _PT),
        ("seq_lens", _PT),
        ("query_start_loc", _PT),
        ("output", _PT),
        ("workspace", _vp),
        ("workspace_size", _size_t),
        ("stream", _vp),
    ]


class HashArgs(_Args):
    """``hashattn_hash_args_t``."""

    _fields_ = [
        ("struct_size", _size_t),
        ("flags", _u32),
        ("layer", _i32),
        ("side", _i32),
        ("input", _PT),
        ("signatures", _PT),
        ("workspace", _vp),
        ("workspace_size", _size_t),
        ("stream", _vp),
    ]
    _defaults_ = {"side": HashSide.QUERY}


# ---- the function table ------------------------------------------------------------

_status = ctypes.c_int  # hashattn_status_t (an enum: int in the C ABI)

VersionFn = ctypes.CFUNCTYPE(ctypes.c_char_p)
StatusStringFn = ctypes.CFUNCTYPE(ctypes.c_char_p, ctypes.c_int)
LastErrorFn = ctypes.CFUNCTYPE(ctypes.c_char_p, _vp)
ContextCreateFn = ctypes.CFUNCTYPE(_status, ctypes.POINTER(ContextConfig), ctypes.POINTER(_vp))
ContextDestroyFn = ctypes.CFUNCTYPE(_status, _vp)
WeightsBindFn = ctypes.CFUNCTYPE(_status, _vp, ctypes.POINTER(WeightsBindArgs))
WeightsLoadFn = ctypes.CFUNCTYPE(_status, _vp, ctypes.POINTER(WeightsLoadArgs))
WorkspaceSizeFn = ctypes.CFUNCTYPE(_status, _vp, ctypes.POINTER(WorkspaceArgs),
                                   ctypes.POINTER(_size_t))
CacheWriteFn = ctypes.CFUNCTYPE(_status, _vp, ctypes.POINTER(CacheWriteArgs))
DecodeFn = ctypes.CFUNCTYPE(_status, _vp, ctypes.POINTER(DecodeArgs))
PrefillFn = ctypes.CFUNCTYPE(_status, _vp, ctypes.POINTER(PrefillArgs))
HashFn = ctypes.CFUNCTYPE(_status, _vp, ctypes.POINTER(HashArgs))


class Api(ctypes.Structure):
    """``hashattn_api_t``: the table ``hashattn_get_api(1)`` returns (static, never freed)."""

    _fields_ = [
        ("struct_size", _size_t),
        ("abi_major", _u32),
        ("abi_minor", _u32),
        ("version", VersionFn),
        ("status_string", StatusStringFn),
        ("last_error", LastErrorFn),
        ("context_create", ContextCreateFn),
        ("context_destroy", ContextDestroyFn),
        ("weights_bind", WeightsBindFn),
        ("weights_load", WeightsLoadFn),
        ("workspace_size", WorkspaceSizeFn),
        ("cache_write", CacheWriteFn),
        ("decode", DecodeFn),
        ("prefill", PrefillFn),
        ("hash", HashFn),
        # 1.1: tensor parallelism (docs/multi-gpu.md); not wrapped by the adapter yet
        ("comm_unique_id", _vp),
        ("comm_create", _vp),
        ("comm_bind", _vp),
        ("comm_abort", _vp),
        ("all_reduce", _vp),
    ]


GetApiFn = ctypes.CFUNCTYPE(ctypes.POINTER(Api), ctypes.c_uint32)

#: Every struct of the header with its C name (for the layout test and docs).
C_NAMES = {
    "hashattn_budget_t": Budget,
    "hashattn_context_config_t": ContextConfig,
    "hashattn_mlp_weights_t": MlpWeights,
    "hashattn_weights_bind_args_t": WeightsBindArgs,
    "hashattn_weights_load_args_t": WeightsLoadArgs,
    "hashattn_workspace_args_t": WorkspaceArgs,
    "hashattn_cache_write_args_t": CacheWriteArgs,
    "hashattn_decode_args_t": DecodeArgs,
    "hashattn_prefill_args_t": PrefillArgs,
    "hashattn_hash_args_t": HashArgs,
    "hashattn_api_t": Api,
    "DLTensor": DLTensor,
    "DLDataType": DLDataType,
    "DLDevice": DLDevice,
}
