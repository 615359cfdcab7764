"""DLTensor views of numpy arrays: pointers, shapes, strides, dtypes, no copies;
bfloat16 conversions."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

import hashattn
from hashattn._dlpack import KDLBFLOAT, KDLCPU, KDLFLOAT, KDLINT, KDLUINT


def _shape(t):
    return [t.shape[i] for i in range(t.ndim)]


def _strides(t):
    return [t.strides[i] for i in range(t.ndim)]


@pytest.mark.parametrize("dtype,code,bits", [
    (np.float32, KDLFLOAT, 32), (np.float16, KDLFLOAT, 16), (np.float64, KDLFLOAT, 64),
    (np.int32, KDLINT, 32), (np.int64, KDLINT, 64), (np.uint32, KDLUINT, 32),
    (np.uint16, KDLUINT, 16), (np.int8, KDLINT, 8)])
def test_numpy_dtypes(dtype, code, bits):
    a = np.zeros((3, 4), dtype)
    b = hashattn.borrow(a, "a")
    assert b.tensor.dtype.key() == (code, bits, 1)
    assert (b.tensor.device.device_type, b.tensor.device.device_id) == (KDLCPU, 0)
    assert b.tensor.data == a.ctypes.data
    assert _shape(b.tensor) == [3, 4] and _strides(b.tensor) == [4, 1]
    assert b.tensor.byte_offset == 0


def test_views_share_memory_and_strides_are_elements():
    base = np.arange(2 * 5 * 6 * 8, dtype=np.float32).reshape(2, 5, 6, 8)
    v = base[1, 1:4, ::2, :]          # offset data, non-contiguous
    b = hashattn.borrow(v, "v")
    assert b.tensor.data == v.__array_interface__["data"][0]
    assert b.tensor.data != base.ctypes.data
    assert _shape(b.tensor) == [3, 3, 8]
    assert _strides(b.tensor) == [48, 16, 1]
    t = np.swapaxes(base, 1, 2)
    assert _strides(hashattn.borrow(t, "t").tensor) == [240, 8, 48, 1]
    # negative strides are passed through (the library refuses them by name)
    assert _strides(hashattn.borrow(base[:, ::-1], "r").tensor)[1] == -48


def test_borrow_keeps_object_alive():
    b = hashattn.borrow(np.ones(1000, np.float32), "x")
    ptr = b.tensor.data
    import gc
    gc.collect()
    assert ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))[999] == 1.0
    assert b.obj.shape == (1000,)


def test_scalar_and_empty_arrays():
    b = hashattn.borrow(np.zeros((0, 4, 8), np.float32), "e")
    assert _shape(b.tensor) == [0, 4, 8]
    s = hashattn.borrow(np.array(3.0, np.float32), "s")
    assert s.tensor.ndim == 0


def test_bad_objects():
    assert hashattn.borrow(None, "n") is None
    with pytest.raises(TypeError, match="x: expected a numpy array"):
        hashattn.borrow([1, 2, 3], "x")
    with pytest.raises(TypeError, match="y: numpy dtype bool"):
        hashattn.borrow(np.zeros(3, bool), "y")
    with pytest.raises(TypeError, match="big-endian"):
        hashattn.borrow(np.zeros(3, ">f4"), "z")
    rec = np.zeros(4, dtype=[("a", np.int8), ("b", np.float32)])
    with pytest.raises(ValueError, match="w: byte strides"):
        hashattn.borrow(rec["b"], "w")


def test_reinterpret():
    bits = np.zeros((2, 3), np.uint16)
    r = hashattn.Reinterpret(bits, "bfloat16")
    b = hashattn.borrow(r, "r")
    assert b.tensor.dtype.key() == (KDLBFLOAT, 16, 1)
    assert b.tensor.data == bits.ctypes.data
    assert r.shape == (2, 3)
    u = hashattn.borrow(hashattn.Reinterpret(np.zeros(4, np.int32), "uint32"), "u")
    assert u.tensor.dtype.key() == (KDLUINT, 32, 1)
    with pytest.raises(TypeError, match="cannot read 4-byte elements as bfloat16"):
        hashattn.Reinterpret(np.zeros(3, np.float32), "bfloat16")


def test_bfloat16_round_to_nearest_even():
    f = np.array([1.0, -2.5, 0.0, -0.0, np.inf, -np.inf, 65504.0, 1e-40, 3.4e38], np.float32)
    bits = hashattn.float32_to_bfloat16_bits(f)
    assert np.array_equal(hashattn.bfloat16_bits_to_float32(bits)[:6], f[:6])
    # halfway cases: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> even (1.0)
    one_half_ulp = np.array([1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8], np.float32)
    assert hashattn.float32_to_bfloat16_bits(one_half_ulp).tolist() == [0x3F80, 0x3F82]
    nan = hashattn.float32_to_bfloat16_bits(np.array([np.nan], np.float32))
    assert np.isnan(hashattn.bfloat16_bits_to_float32(nan))[0]
    # above bfloat16's largest finite value (about 3.39e38) rounds to inf
    big = hashattn.float32_to_bfloat16_bits(np.array([3.4e38], np.float32))
    assert hashattn.bfloat16_bits_to_float32(big)[0] == np.inf
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    y = hashattn.bfloat16_bits_to_float32(hashattn.float32_to_bfloat16_bits(x))
    assert np.all(np.abs(y - x) <= np.abs(x) * 2.0 ** -8)


def test_as_bfloat16_and_to_float32():
    bits = hashattn.float32_to_bfloat16_bits(np.array([1.5, -3.0], np.float32))
    r = hashattn.as_bfloat16(bits)
    assert r.array is bits  # a view, not a copy
    assert hashattn.to_float32(r).tolist() == [1.5, -3.0]
    r2 = hashattn.as_bfloat16(np.array([0.1], np.float64))
    assert r2.array.dtype == np.uint16
    assert hashattn.to_float32(np.array([1, 2], np.int32)).dtype == np.float32
