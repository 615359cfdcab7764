"""torch CPU tensors through the adapter: the same results as numpy arrays, no copies.
Skipped when torch is not installed."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import hashattn  # noqa: E402
from hashattn._dlpack import KDLBFLOAT, KDLCPU, KDLFLOAT, KDLINT, KDLUINT  # noqa: E402
from cases import build_case  # noqa: E402


def to_torch(x):
    """A torch CPU tensor with the same bits as a numpy operand (bf16 -> torch.bfloat16)."""
    if isinstance(x, hashattn.Reinterpret):
        return torch.from_numpy(x.array.view(np.int16).copy()).view(torch.bfloat16)
    if x.dtype == np.uint32:
        return torch.from_numpy(x.view(np.int32).copy()).view(torch.uint32)
    return torch.from_numpy(x.copy())


def np_bits(x):
    """numpy array of a numpy operand's raw bits, comparable with bits()."""
    if isinstance(x, hashattn.Reinterpret):
        return x.array
    return x.view(np.uint16) if x.dtype == np.float16 else x


def bits(t):
    """numpy array of a tensor's raw bits (uint32 / bf16 safe)."""
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype == getattr(torch, "uint32", None):
        return t.view(torch.int32).numpy().view(np.uint32)
    return t.numpy()


@pytest.mark.parametrize("dtype,key", [
    (torch.float32, (KDLFLOAT, 32, 1)), (torch.float16, (KDLFLOAT, 16, 1)),
    (torch.bfloat16, (KDLBFLOAT, 16, 1)), (torch.int32, (KDLINT, 32, 1)),
    (torch.int64, (KDLINT, 64, 1)), (torch.uint8, (KDLUINT, 8, 1))])
def test_borrow_torch(dtype, key):
    base = torch.zeros((4, 6, 8), dtype=dtype)
    view = base[1:, ::2, :]
    b = hashattn.borrow(view, "v")
    t = b.tensor
    assert t.dtype.key() == key
    assert (t.device.device_type, t.device.device_id) == (KDLCPU, 0)
    assert t.data == view.data_ptr() != base.data_ptr()
    assert [t.shape[i] for i in range(3)] == [3, 3, 8]
    assert [t.strides[i] for i in range(3)] == [48, 16, 1]
    assert b.obj is view


def test_borrow_torch_uint32_and_errors():
    if hasattr(torch, "uint32"):
        assert hashattn.borrow(torch.zeros(3, dtype=torch.uint32), "u").tensor.dtype.key() == (KDLUINT, 32, 1)
    r = hashattn.Reinterpret(torch.zeros(3, dtype=torch.int32), "uint32")
    assert hashattn.borrow(r, "r").tensor.dtype.key() == (KDLUINT, 32, 1)
    with pytest.raises(TypeError, match="b: torch dtype torch.bool"):
        hashattn.borrow(torch.zeros(3, dtype=torch.bool), "b")
    with pytest.raises(TypeError, match="only strided"):
        hashattn.borrow(torch.zeros(3, 3).to_sparse(), "s")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_torch_cpu_matches_numpy(dtype):
    c = build_case(700, dtype=dtype, hq=8, hkv=2, d=32, m=16, block_size=8, layout="HND",
                   seq_lens=[150, 40, 9])
    ctx = c.ctx
    budget = hashattn.Budget(4, 4, 10)
    args_np = (c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables, c.seq_lens)
    want = ctx.decode(*args_np, budget=budget, return_selection=True)
    args_t = tuple([c.layer] + [to_torch(a) for a in args_np[1:]])
    got = ctx.decode(*args_t, budget=budget, return_selection=True)
    assert isinstance(got[0], torch.Tensor) and got[0].dtype == getattr(torch, dtype)
    assert np.array_equal(bits(got[0]), np_bits(want[0]))
    assert np.array_equal(got[1].numpy(), want[1]) and np.array_equal(got[2].numpy(), want[2])

    sig = ctx.hash(c.layer, to_torch(c.query), "query")
    assert isinstance(sig, torch.Tensor)
    assert np.array_equal(bits(sig), ctx.hash(c.layer, c.query, "query"))

    qsl = np.arange(4, dtype=np.int32)
    pre_np = ctx.prefill(c.layer, c.query, c.key_cache, c.value_cache, c.block_tables, c.seq_lens, qsl)
    pre_t = ctx.prefill(c.layer, to_torch(c.query), to_torch(c.key_cache), to_torch(c.value_cache),
                        to_torch(c.block_tables), to_torch(c.seq_lens), to_torch(qsl))
    assert np.array_equal(bits(pre_t), np_bits(pre_np))


def test_torch_cache_write_in_place():
    c = build_case(701, dtype="bfloat16", hq=4, hkv=2, d=16, m=8, block_size=4, seq_lens=[10])
    kc, vc, sc = c.ctx.allocate_caches(c.num_blocks, backend="torch")
    assert kc.dtype == torch.bfloat16 and tuple(kc.shape) == c.ctx.kv_cache_shape(c.num_blocks)
    ptr = kc.data_ptr()
    c.ctx.cache_write(c.layer, to_torch(c.keys), to_torch(c.vals), kc, vc, sc, to_torch(c.slots))
    assert kc.data_ptr() == ptr
    assert np.array_equal(bits(kc), c.key_cache.array)
    assert np.array_equal(bits(vc), c.value_cache.array)
    assert np.array_equal(bits(sc), c.sig_cache)


def test_torch_weights_bind_and_write(tmp_path):
    wq, wk = hashattn.random_weights(1, 4, 4, 16, 8, seed=3)
    a = hashattn.Context(1, 4, 2, 16, dtype="float32", mlp_width=8)
    b = hashattn.Context(1, 4, 2, 16, dtype="float32", mlp_width=8)
    a.bind_weights(wq, wk)
    b.bind_weights({k: torch.from_numpy(v) for k, v in wq.items()},
                   {k: torch.from_numpy(v) for k, v in wk.items()})
    x = np.random.default_rng(0).standard_normal((20, 4, 16)).astype(np.float32)
    assert np.array_equal(a.hash(0, x), b.hash(0, x))
    # bfloat16 tensors bind like bf16 bit patterns, and write BF16 files
    tq = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in wq.items()}
    tk = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in wk.items()}
    b.bind_weights(tq, tk)
    hashattn.write_weights(tmp_path / "w", tq, tk, num_kv_heads=2, dtype="BF16")
    a.load_weights(tmp_path / "w")
    assert np.array_equal(a.hash(0, x), b.hash(0, x))
