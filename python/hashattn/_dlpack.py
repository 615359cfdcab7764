"""DLPack 0.6 ``DLTensor`` views of numpy arrays and torch tensors, without copies.

The C structs here mirror ``dlpack/dlpack.h`` (the layout is the same in DLPack 0.6
and 1.x).  :func:`borrow` describes an array or tensor as a ``DLTensor`` whose
``data`` points at the object's own memory; the returned :class:`Borrowed` keeps the
object, the shape and the stride arrays alive for as long as it is referenced, so the
caller holds it until the C call returns.

numpy has no bfloat16 (and torch before 2.3 no uint32), so :class:`Reinterpret`
wraps an array or tensor and tells the library to read its elements as another
dtype of the same size: ``Reinterpret(u16_array, "bfloat16")``.
"""
from __future__ import annotations

import ctypes
import struct
import sys
from typing import Any, Optional, Tuple

import numpy as np

__all__ = [
    "DLDevice",
    "DLDataType",
    "DLTensor",
    "Borrowed",
    "Reinterpret",
    "as_bfloat16",
    "float32_to_bfloat16_bits",
    "bfloat16_bits_to_float32",
    "to_float32",
    "borrow",
    "describe",
    "TensorSlots",
    "dtype_name",
    "parse_dtype",
    "KDLCPU",
    "KDLCUDA",
    "KDLCUDAHOST",
]

# DLDeviceType values (dlpack.h)
KDLCPU = 1
KDLCUDA = 2
KDLCUDAHOST = 3

# DLDataTypeCode values (dlpack.h)
KDLINT = 0
KDLUINT = 1
KDLFLOAT = 2
KDLBFLOAT = 4
KDLCOMPLEX = 5


class DLDevice(ctypes.Structure):
    """``DLDevice``: ``{DLDeviceType device_type; int32_t device_id;}``."""

    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class DLDataType(ctypes.Structure):
    """``DLDataType``: ``{uint8_t code; uint8_t bits; uint16_t lanes;}``."""

    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]

    def key(self) -> Tuple[int, int, int]:
        return (int(self.code), int(self.bits), int(self.lanes))


class DLTensor(ctypes.Structure):
    """``DLTensor`` of DLPack 0.6 (same layout in 1.x)."""

    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


# ---- dtype names ---------------------------------------------------------------

_NAME_TO_DL = {
    "float16": (KDLFLOAT, 16),
    "float32": (KDLFLOAT, 32),
    "float64": (KDLFLOAT, 64),
    "bfloat16": (KDLBFLOAT, 16),
    "int8": (KDLINT, 8),
    "int16": (KDLINT, 16),
    "int32": (KDLINT, 32),
    "int64": (KDLINT, 64),
    "uint8": (KDLUINT, 8),
    "uint16": (KDLUINT, 16),
    "uint32": (KDLUINT, 32),
    "uint64": (KDLUINT, 64),
    "complex64": (KDLCOMPLEX, 64),
    "complex128": (KDLCOMPLEX, 128),
}
_DL_TO_NAME = {v: k for k, v in _NAME_TO_DL.items()}
_ALIASES = {"fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32",
            "bf16": "bfloat16", "f16": "float16", "f32": "float32"}


def dtype_name(dtype: Any) -> str:
    """Canonical name ("float16", "bfloat16", ...) of a string, numpy or torch dtype."""
    if isinstance(dtype, str):
        name = _ALIASES.get(dtype.lower(), dtype.lower())
        if name.startswith("torch."):
            name = name[len("torch."):]
            name = _ALIASES.get(name, name)
    elif _is_torch_dtype(dtype):
        name = str(dtype)[len("torch."):]
        name = _ALIASES.get(name, name)
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError as e:
            raise TypeError(f"{dtype!r} is not a dtype") from e
    if name not in _NAME_TO_DL:
        raise TypeError(f"dtype {dtype!r} has no DLPack equivalent here")
    return name


def parse_dtype(dtype: Any) -> DLDataType:
    """``DLDataType`` of a dtype name, numpy dtype or torch dtype."""
    found = _PARSED.get(dtype) if isinstance(dtype, str) else None
    if found is None:
        code, bits = _NAME_TO_DL[dtype_name(dtype)]
        found = DLDataType(code, bits, 1)
        if isinstance(dtype, str):
            _PARSED[dtype] = found
    return DLDataType(found.code, found.bits, found.lanes)


_PARSED: dict = {}


def _is_torch_dtype(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.dtype)


def _is_torch_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


# ---- bfloat16 without numpy support ---------------------------------------------


class Reinterpret:
    """An array or tensor whose elements the library reads as ``dtype``.

    ``dtype`` must have the same element size as the wrapped object's, e.g. a
    ``uint16`` array holding bfloat16 bit patterns (``Reinterpret(a, "bfloat16")``),
    or a torch ``int32`` tensor used as a ``uint32`` signature cache. No copy is
    made; ``.array`` is the wrapped object and ``.shape`` its shape.
    """

    __slots__ = ("array", "dtype")

    def __init__(self, array: Any, dtype: Any) -> None:
        if isinstance(array, Reinterpret):
            array = array.array
        name = dtype_name(dtype)
        size = _element_size(array)
        if _NAME_TO_DL[name][1] != 8 * size:
            raise TypeError(f"cannot read {size}-byte elements as {name}")
        self.array = array
        self.dtype = name

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape)

    def __repr__(self) -> str:
        return f"Reinterpret({self.array!r}, {self.dtype!r})"


def _element_size(obj: Any) -> int:
    if _is_torch_tensor(obj):
        return int(obj.element_size())
    if isinstance(obj, np.ndarray):
        return int(obj.itemsize)
    raise TypeError(f"expected a numpy array or torch tensor, got {type(obj).__name__}")


def float32_to_bfloat16_bits(x: Any) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of ``x``, rounded to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = ((u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), rounded)


def bfloat16_bits_to_float32(bits: Any) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (uint16, exact)."""
    b = np.asarray(bits)
    if b.dtype != np.uint16:
        raise TypeError(f"expected uint16 bit patterns, got {b.dtype}")
    return (b.astype(np.uint32) << 16).view(np.float32)


def as_bfloat16(x: Any) -> Reinterpret:
    """A bfloat16 operand from float values (rounded) or from uint16 bit patterns (a view).

    With a uint16 numpy array or torch tensor no copy is made; anything else is
    converted with :func:`float32_to_bfloat16_bits` into a new uint16 array.
    """
    if _is_torch_tensor(x) and str(x.dtype) in ("torch.uint16", "torch.int16"):
        return Reinterpret(x, "bfloat16")
    if isinstance(x, np.ndarray) and x.dtype == np.uint16:
        return Reinterpret(x, "bfloat16")
    return Reinterpret(float32_to_bfloat16_bits(x), "bfloat16")


def _torch_bits(t: Any) -> np.ndarray:
    """The raw elements of a torch tensor as a signed-integer numpy array (a copy)."""
    torch = sys.modules["torch"]
    t = t.detach().cpu().contiguous()
    return t.view(getattr(torch, f"int{8 * t.element_size()}")).numpy()


def to_float32(obj: Any) -> np.ndarray:
    """A float32 numpy copy of a numpy array, torch tensor (any device) or
    :class:`Reinterpret` (for tests and inspection; always copies)."""
    if isinstance(obj, Reinterpret):
        arr = obj.array
        bits = _torch_bits(arr) if _is_torch_tensor(arr) else np.asarray(arr)
        if obj.dtype == "bfloat16":
            return bfloat16_bits_to_float32(bits.view(np.uint16))
        return bits.view(np.dtype(obj.dtype)).astype(np.float32)
    if _is_torch_tensor(obj):
        return obj.detach().float().cpu().numpy()
    return np.asarray(obj).astype(np.float32)


# ---- borrowing -------------------------------------------------------------------


class Borrowed:
    """A ``DLTensor`` describing another object's memory, and what keeps it valid.

    ``.tensor`` is the ``DLTensor``; ``.pointer`` a ``DLTensor*`` to it. The object,
    shape and strides are referenced here, so they live as long as this does.
    """

    __slots__ = ("tensor", "pointer", "obj", "_shape", "_strides")

    def __init__(self, obj: Any, data: int, device_type: int, device_id: int,
                 dtype: Tuple[int, int, int], shape: Tuple[int, ...],
                 strides: Tuple[int, ...]) -> None:
        n = len(shape)
        arr = _I64[n] if n < len(_I64) else ctypes.c_int64 * n
        self.obj = obj
        self._shape = sh = arr(*shape)
        self._strides = st = arr(*strides)
        t = DLTensor()
        t.data = data or None
        dev = t.device  # a view into t
        dev.device_type = device_type
        dev.device_id = device_id
        t.ndim = n
        t.dtype = DLDataType(*dtype)
        t.shape = sh
        t.strides = st
        self.tensor = t
        self.pointer = ctypes.pointer(t)


# Array types for shapes and strides, by rank (rank 0 gets one unused element).
_I64 = [ctypes.c_int64 * max(n, 1) for n in range(9)]
_NP_DL: dict = {}     # numpy dtype -> (code, bits, lanes)
_TORCH_DL: dict = {}  # torch dtype -> (code, bits, lanes)


def _numpy_dl_dtype(dt: np.dtype, name: str) -> Tuple[int, int, int]:
    found = _NP_DL.get(dt)
    if found is not None:
        return found
    if dt.name == "bfloat16":  # ml_dtypes' bfloat16
        found = (KDLBFLOAT, 16, 1)
    else:
        if dt.byteorder == ">" or (dt.byteorder == "=" and sys.byteorder == "big"):
            raise TypeError(f"{name}: big-endian arrays are not supported")
        code = {"f": KDLFLOAT, "i": KDLINT, "u": KDLUINT, "c": KDLCOMPLEX}.get(dt.kind)
        if code is None:
            raise TypeError(f"{name}: numpy dtype {dt} has no DLPack equivalent")
        found = (code, 8 * dt.itemsize, 1)
    _NP_DL[dt] = found
    return found


def _torch_dl_dtype(tdt: Any, name: str) -> Tuple[int, int, int]:
    found = _TORCH_DL.get(tdt)
    if found is not None:
        return found
    key = str(tdt)[len("torch."):]
    key = _ALIASES.get(key, key)
    if key not in _NAME_TO_DL:
        raise TypeError(f"{name}: torch dtype {tdt} has no DLPack equivalent here")
    found = (*_NAME_TO_DL[key], 1)
    _TORCH_DL[tdt] = found
    return found


def _compact(shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Row-major element strides of ``shape``."""
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= max(int(n), 1)
    return tuple(out[::-1])


Description = Tuple[Any, int, int, int, Tuple[int, int, int], Tuple[int, ...], Tuple[int, ...]]


def describe(obj: Any, name: str) -> Description:
    """(object, data pointer, device type, device id, (code, bits, lanes), shape,
    element strides) of a numpy array, torch tensor or :class:`Reinterpret`.

    An empty array gets compact strides (numpy 2 gives them zero strides). numpy
    arrays are kDLCPU; torch tensors kDLCPU or kDLCUDA with their device index.
    """
    override = None
    if type(obj) is Reinterpret:
        override = _NAME_TO_DL[obj.dtype] + (1,)
        obj = obj.array
    if isinstance(obj, np.ndarray):
        dt = obj.dtype
        dtype = override if override is not None else _numpy_dl_dtype(dt, name)
        shape = obj.shape
        if obj.size == 0:
            strides = _compact(shape)
        else:
            item = dt.itemsize
            bstrides = obj.strides
            strides = tuple(s // item for s in bstrides)
            if any(s % item for s in bstrides):
                raise ValueError(f"{name}: byte strides {bstrides} are not multiples of the "
                                 f"element size {item}")
        return obj, obj.__array_interface__["data"][0], KDLCPU, 0, dtype, shape, strides
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided:
            raise TypeError(f"{name}: only strided torch tensors can be passed ({obj.layout})")
        dtype = override if override is not None else _torch_dl_dtype(obj.dtype, name)
        dev = obj.device
        if dev.type == "cuda":
            dev_type, dev_id = KDLCUDA, (dev.index if dev.index is not None
                                          else torch.cuda.current_device())
        elif dev.type == "cpu":
            dev_type, dev_id = KDLCPU, 0
        else:
            raise TypeError(f"{name}: torch device {dev} is not supported (cpu or cuda)")
        shape = tuple(obj.shape)
        strides = _compact(shape) if obj.numel() == 0 else obj.stride()
        return obj, obj.data_ptr(), dev_type, dev_id, dtype, shape, tuple(strides)
    raise TypeError(f"{name}: expected a numpy array, torch tensor or hashattn.Reinterpret, "
                    f"got {type(obj).__name__}")


def borrow(obj: Any, name: str = "tensor") -> Optional[Borrowed]:
    """Describe ``obj`` (numpy array, torch tensor, :class:`Reinterpret`, or None) as a
    ``DLTensor`` without copying (see :func:`describe`). ``name`` is used in error
    messages. The returned :class:`Borrowed` keeps everything alive."""
    if obj is None:
        return None
    return Borrowed(*describe(obj, name))


class TensorSlots:
    """Preallocated ``DLTensor`` structs filled in place, for the run-path calls.

    Creating ctypes objects costs microseconds each; a call fills ``count`` fixed
    structs (and their shape/stride storage of up to 8 dimensions) with
    ``struct.pack_into`` instead. Not thread-safe: keep one per thread. The
    described objects must stay referenced by the caller until the call returns.
    """

    MAX_DIMS = 8
    _HEAD = struct.Struct("=QiiiBBH")  # data, device_type, device_id, ndim, code, bits, lanes
    _DIMS = [struct.Struct(f"={n}q") for n in range(MAX_DIMS + 1)]

    def __init__(self, count: int = 16) -> None:
        assert DLTensor.shape.offset == self._HEAD.size
        self.count = count
        self.tensors = (DLTensor * count)()
        self.dims = (ctypes.c_int64 * (2 * self.MAX_DIMS * count))()
        base = ctypes.addressof(self.dims)
        step = 2 * self.MAX_DIMS * 8
        p64 = ctypes.POINTER(ctypes.c_int64)
        for i in range(count):
            t = self.tensors[i]
            t.shape = ctypes.cast(base + step * i, p64)
            t.strides = ctypes.cast(base + step * i + 8 * self.MAX_DIMS, p64)
        self.pointers = [ctypes.pointer(self.tensors[i]) for i in range(count)]
        self._tsize = ctypes.sizeof(DLTensor)
        self._step = step

    def put(self, i: int, obj: Any, name: str) -> Any:
        """Describe ``obj`` in slot ``i``; returns its ``DLTensor*`` (None for None)."""
        if obj is None:
            return None
        _, data, dev_type, dev_id, dtype, shape, strides = describe(obj, name)
        n = len(shape)
        if n > self.MAX_DIMS:
            raise ValueError(f"{name}: {n} dimensions; at most {self.MAX_DIMS} are supported")
        self._HEAD.pack_into(self.tensors, self._tsize * i, data, dev_type, dev_id, n, *dtype)
        pack = self._DIMS[n].pack_into
        pack(self.dims, self._step * i, *shape)
        pack(self.dims, self._step * i + 8 * self.MAX_DIMS, *strides)
        return self.pointers[i]
