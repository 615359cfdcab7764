"""The adapter on a CUDA device (torch CUDA tensors), for the GPU machine.

Parity: a CUDA context given the same tensors (copied to the device) as a CPU
context gives the same signatures and caches bit for bit, the same selections, and
outputs within fp32-accumulation tolerance. A decode captured in a CUDA graph
through torch replays correctly with new inputs.

Adapter vs the C library: the same CUDA tensors given to the adapter's decode and to
the library's function table directly (DLTensors built here by hand, not by the
adapter) give bit-identical outputs, selections and counts.

Skipped without torch, without a CUDA device, or (all but the first test) when the
library was built without its CUDA backend.

Runs under pytest, or as a plain script where pytest is absent (the GPU machine):
    HASHATTN_LIBRARY=build/libhashattn.so python3 python/tests/test_gpu.py
which ends with "test_gpu.py: N passed, N failed, N skipped: OK|FAILED" (exit 0 only
when none failed).
"""
from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__":  # a plain script: the checkout's package and the test helpers
    for _p in (os.path.dirname(_HERE), _HERE):
        if _p not in sys.path:
            sys.path.insert(0, _p)
    import _minipytest as pytest  # noqa: E402
else:
    import pytest

torch = pytest.importorskip("torch")

import hashattn  # noqa: E402
from hashattn import _abi, _dlpack  # noqa: E402
from cases import TOL, build_case, make_input, values  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]
needs_cuda_build = pytest.mark.skipif(
    not hashattn.has_cuda(), reason="libhashattn was built without CUDA")

DEV = "cuda:0"


def cuda(x):
    """A CUDA tensor with the bits of a numpy operand (bf16 -> torch.bfloat16)."""
    if isinstance(x, hashattn.Reinterpret):
        return torch.from_numpy(x.array.view(np.int16).copy()).view(torch.bfloat16).to(DEV)
    if x.dtype == np.uint32:
        return torch.from_numpy(x.view(np.int32).copy()).view(torch.uint32).to(DEV)
    return torch.from_numpy(np.ascontiguousarray(x)).to(DEV)


def bits(t):
    t = t.detach().cpu().contiguous()
    if t.dtype in (torch.bfloat16, torch.float16):
        return t.view(torch.int16).numpy().view(np.uint16)
    if t.dtype == torch.uint32:
        return t.view(torch.int32).numpy().view(np.uint32)
    return t.numpy()


def np_bits(x):
    return x.array if isinstance(x, hashattn.Reinterpret) else x.view(np.uint16) \
        if x.dtype == np.float16 else x


def test_cpu_context_refuses_cuda_tensors():
    c = build_case(800, dtype="float16", hq=4, hkv=2, d=64, m=16, seq_lens=[20])
    with pytest.raises(hashattn.InvalidArgumentError,
                       match=r"decode: query.device = kDLCUDA:0, expected host memory"):
        c.ctx.decode(c.layer, cuda(c.query), c.key_cache, c.value_cache, c.sig_cache,
                     c.block_tables, c.seq_lens)


def _gpu_twin(c):
    g = hashattn.Context(2, c.hq, c.hkv, c.d, block_size=c.block_size, dtype=c.dtype,
                         device=DEV, kv_layout=c.layout, mlp_width=c.m, selection=c.selection,
                         signature_layout=c.sig_layout,
                         dense_below=-1)  # the CPU twin never goes dense by length
    g.bind_weights(c.wq, c.wk)
    return g


GPU_CASES = [
    # (seed, dtype, hq, hkv, d, m, block, layout, selection, sig_layout, seq_lens)
    (810, "bfloat16", 32, 8, 128, 128, 16, "NHD", "group", "per_query_head", [1000, 257, 1, 0]),
    (811, "float16", 8, 2, 64, 64, 16, "HND", "per_head", "per_kv_head", [600, 33]),
    (812, "bfloat16", 9, 3, 64, 64, 1, "NHD", "group", "per_kv_head",
     [50 + 37 * i for i in range(12)]),
]


@needs_cuda_build
@pytest.mark.parametrize("p", GPU_CASES, ids=lambda p: f"gpu({p[1]},hq={p[2]},hkv={p[3]},d={p[4]},"
                         f"block={p[6]},{p[7]},{p[8]},{p[9]},batch={len(p[10])},seed={p[0]})")
def test_cuda_matches_cpu(p):
    seed, dtype, hq, hkv, d, m, bs, layout, sel, sig, lens = p
    c = build_case(seed, dtype=dtype, hq=hq, hkv=hkv, d=d, m=m, block_size=bs, layout=layout,
                   selection=sel, sig_layout=sig, seq_lens=lens)
    g = _gpu_twin(c)

    # hash
    for side, x in (("query", c.query), ("key", c.keys)):
        got = bits(g.hash(c.layer, cuda(x), side))
        want = c.ctx.hash(c.layer, x, side)
        assert np.array_equal(got, want), f"{side}: {(got != want).sum()} of {want.size} differ"

    # cache_write into fresh device caches equals the CPU caches
    kc, vc, sc = g.allocate_caches(c.num_blocks)
    g.cache_write(c.layer, cuda(c.keys), cuda(c.vals), kc, vc, sc, cuda(c.slots))
    torch.cuda.synchronize()
    assert np.array_equal(bits(kc), np_bits(c.key_cache))
    assert np.array_equal(bits(vc), np_bits(c.value_cache))
    assert np.array_equal(bits(sc), c.sig_cache)

    # decode with selections
    budget = hashattn.Budget(16, 16, -1, 1 / 16)
    args = (c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables, c.seq_lens)
    want_o, want_i, want_c = c.ctx.decode(c.layer, *args, budget=budget, return_selection=True)
    got_o, got_i, got_c = g.decode(c.layer, *[cuda(a) for a in args], budget=budget,
                                   return_selection=True)
    torch.cuda.synchronize()
    assert np.array_equal(got_c.cpu().numpy(), want_c)
    assert np.array_equal(got_i.cpu().numpy(), want_i)
    err = np.abs(values(got_o) - values(want_o)).max()
    assert err <= 2 * TOL[dtype], f"decode max error {err}"

    dense_g = g.decode(c.layer, *[cuda(a) for a in args], dense=True)
    dense_c = c.ctx.decode(c.layer, *args, dense=True)
    assert np.abs(values(dense_g) - values(dense_c)).max() <= 2 * TOL[dtype]

    # prefill of the last 5 tokens of each sequence
    rows = np.minimum(c.seq_lens, 5)
    qsl = np.concatenate([[0], np.cumsum(rows)]).astype(np.int32)
    q, _ = make_input(c.rng, (int(rows.sum()), hq, d), dtype)
    pre_args = (c.key_cache, c.value_cache, c.block_tables, c.seq_lens)
    want_p = c.ctx.prefill(c.layer, q, *pre_args, qsl)
    got_p = g.prefill(c.layer, cuda(q), *[cuda(a) for a in pre_args], cuda(qsl))
    assert np.abs(values(got_p) - values(want_p)).max() <= 2 * TOL[dtype]
    g.close()


@needs_cuda_build
def test_cuda_graph_replay():
    c = build_case(820, dtype="bfloat16", hq=8, hkv=2, d=128, m=64, block_size=16,
                   seq_lens=[700, 300, 45])
    g = _gpu_twin(c)
    budget = hashattn.Budget(16, 16, 32)
    kc, vc, sc = (cuda(c.key_cache), cuda(c.value_cache), cuda(c.sig_cache))
    bt, sl = cuda(c.block_tables), cuda(c.seq_lens)
    q = cuda(c.query)
    out = torch.empty_like(q)
    idx = torch.full((3, g.num_sel_heads, bt.shape[1] * 16), -1, dtype=torch.int32, device=DEV)
    cnt = torch.zeros((3, g.num_sel_heads), dtype=torch.int32, device=DEV)
    g.reserve_workspace("decode", max_num_seqs=3, max_blocks_per_seq=bt.shape[1])

    def step():
        g.decode(c.layer, q, kc, vc, sc, bt, sl, output=out, budget=budget,
                 selected_indices=idx, selected_counts=cnt)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    rng = np.random.default_rng(821)
    for i in range(3):
        new_q, _ = make_input(rng, tuple(q.shape), "bfloat16")
        q.copy_(cuda(new_q))
        out.fill_(0)
        graph.replay()
        torch.cuda.synchronize()
        replayed = (out.clone(), idx.clone(), cnt.clone())
        want = c.ctx.decode(c.layer, new_q, c.key_cache, c.value_cache, c.sig_cache,
                            c.block_tables, c.seq_lens, budget=budget, return_selection=True)
        step()  # eager on the device, same inputs
        torch.cuda.synchronize()
        assert torch.equal(replayed[0], out) and torch.equal(replayed[1], idx)
        assert np.array_equal(replayed[2].cpu().numpy(), want[2])
        assert np.array_equal(replayed[1].cpu().numpy()[:, :, :want[1].shape[2]], want[1])
        assert np.abs(values(replayed[0]) - values(want[0])).max() <= 2 * TOL["bfloat16"]
    g.close()


@needs_cuda_build
def test_graph_capture_refuses_to_grow_the_workspace():
    c = build_case(830, dtype="float16", hq=4, hkv=2, d=64, m=16, seq_lens=[40])
    g = _gpu_twin(c)
    args = [cuda(a) for a in (c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables,
                              c.seq_lens)]
    out = torch.empty_like(args[0])
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="reserve_workspace"):
        with torch.cuda.graph(graph):
            g.decode(c.layer, *args, output=out)
    g.close()


# ---- the adapter against the library's table, called without the adapter ------------

_DL_CODES = {torch.bfloat16: (4, 16), torch.float16: (2, 16), torch.float32: (2, 32),
             torch.int32: (0, 32), torch.int64: (0, 64)}
if hasattr(torch, "uint32"):
    _DL_CODES[torch.uint32] = (1, 32)


class _RawTensor(ctypes.Structure):
    """DLTensor (DLPack 0.6/1.x layout), written out here independently of the adapter."""
    _fields_ = [("data", ctypes.c_void_p), ("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32),
                ("ndim", ctypes.c_int32), ("code", ctypes.c_uint8), ("bits", ctypes.c_uint8),
                ("lanes", ctypes.c_uint16), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


def _raw(t, keep):
    """A DLTensor over a CUDA torch tensor's memory, as a pointer of the ABI's type."""
    code, bits = _DL_CODES[t.dtype]
    shape = (ctypes.c_int64 * t.dim())(*t.shape)
    strides = (ctypes.c_int64 * t.dim())(*t.stride())
    r = _RawTensor(t.data_ptr(), 2, t.device.index or 0, t.dim(), code, bits, 1,
                   ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64)),
                   ctypes.cast(strides, ctypes.POINTER(ctypes.c_int64)), 0)
    keep += [shape, strides, r, t]
    return ctypes.cast(ctypes.pointer(r), ctypes.POINTER(_dlpack.DLTensor))


@needs_cuda_build
def test_adapter_equals_library_table():
    c = build_case(840, dtype="bfloat16", hq=8, hkv=2, d=128, m=64, block_size=16,
                   seq_lens=[900, 64, 1, 333])
    g = _gpu_twin(c)
    budget = hashattn.Budget(16, 16, -1, 1 / 16)
    args = [cuda(a) for a in (c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables,
                              c.seq_lens)]
    q, kc, vc, sc, bt, sl = args
    for dense in (False, True):
        out_a, idx_a, cnt_a = g.decode(c.layer, *args, budget=budget, return_selection=True,
                                       dense=dense)
        torch.cuda.synchronize()
        out_r = torch.full_like(out_a, float("nan"))
        idx_r = torch.full_like(idx_a, -1)  # the adapter's fills: unwritten entries agree
        cnt_r = torch.full_like(cnt_a, 0)
        nbytes = g.workspace_size("decode", max_num_seqs=q.shape[0], max_blocks_per_seq=bt.shape[1])
        ws = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=DEV)
        keep: list = []
        b = _abi.Budget.init(sink_tokens=16, recent_tokens=16, heavy_count=-1, heavy_fraction=1 / 16)
        da = _abi.DecodeArgs.init(
            flags=1 if dense else 0, layer=c.layer, query=_raw(q, keep), key_cache=_raw(kc, keep),
            value_cache=_raw(vc, keep), signature_cache=_raw(sc, keep), block_tables=_raw(bt, keep),
            seq_lens=_raw(sl, keep), output=_raw(out_r, keep), budget=ctypes.pointer(b),
            selected_indices=_raw(idx_r, keep), selected_counts=_raw(cnt_r, keep),
            workspace=ws.data_ptr(), workspace_size=nbytes,
            stream=torch.cuda.current_stream().cuda_stream)
        st = g._api.decode(g._ctx, ctypes.byref(da))
        torch.cuda.synchronize()
        assert st == 0, f"decode through the table: status {st}"
        assert torch.equal(bits_t(out_a), bits_t(out_r)), f"dense={dense}: outputs differ"
        assert torch.equal(cnt_a, cnt_r), f"dense={dense}: counts differ"
        assert torch.equal(idx_a, idx_r), f"dense={dense}: selections differ"
    g.close()


def bits_t(t):
    return t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t


if __name__ == "__main__":
    sys.exit(pytest.run_module(globals(), "test_gpu.py",
                               skip_all=None if torch.cuda.is_available() else "no CUDA device"))
