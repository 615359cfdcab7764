"""Context creation, configuration, workspace handling and errors raised with the
library's messages."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

import hashattn
from cases import build_case, make_input


def test_config_kwargs_reach_the_library():
    ctx = hashattn.Context(3, 8, 2, 64, block_size=4, dtype="float16", kv_layout="HND",
                           mlp_width=48, selection="per_head", signature_layout="per_kv_head",
                           softmax_scale=0.5,
                           budget=hashattn.Budget(sink_tokens=2, recent_tokens=3, heavy_count=5))
    c = ctx.config
    assert c.struct_size == ctypes.sizeof(hashattn.abi.ContextConfig)
    assert (c.num_layers, c.num_q_heads, c.num_kv_heads, c.head_dim, c.block_size) == (3, 8, 2, 64, 4)
    assert c.dtype.key() == (2, 16, 1)
    assert (ctx.kv_layout, ctx.selection, ctx.signature_layout) == (
        hashattn.KVLayout.HND, hashattn.Selection.PER_HEAD, hashattn.SignatureLayout.PER_KV_HEAD)
    assert (ctx.group, ctx.num_sig_heads, ctx.num_sel_heads) == (4, 2, 8)
    assert ctx.softmax_scale == 0.5
    assert ctx.budget == hashattn.Budget(2, 3, 5, 0.0625)
    assert ctx.kv_cache_shape(7) == (7, 2, 4, 64)
    assert ctx.signature_cache_shape(7) == (7, 2, 4)
    assert "HND" in repr(ctx)
    ctx.close()
    ctx.close()  # twice is fine


def test_defaults_are_the_headers():
    with hashattn.Context(1, 4, 4, 64) as ctx:
        assert ctx.dtype == "bfloat16" and ctx.block_size == 16 and ctx.mlp_width == 128
        assert ctx.kv_layout == hashattn.KVLayout.NHD
        assert ctx.selection == hashattn.Selection.GROUP
        assert ctx.signature_layout == hashattn.SignatureLayout.PER_QUERY_HEAD
        assert ctx.softmax_scale == pytest.approx(1 / 8)
        assert ctx.budget == hashattn.Budget()
        assert ctx.device_name == "cpu"


def test_dtype_spellings():
    for spelling in ("float32", "fp32", np.float32, np.dtype("float32")):
        assert hashattn.Context(1, 2, 1, 16, dtype=spelling, mlp_width=8).dtype == "float32"
    assert hashattn.Context(1, 2, 1, 16, dtype="bf16", mlp_width=8).dtype == "bfloat16"


@pytest.mark.parametrize("kwargs,message", [
    (dict(head_dim=12), "config.head_dim = 12"),
    (dict(num_kv_heads=3), "config.num_kv_heads = 3"),
    (dict(num_layers=0), "config.num_layers = 0"),
    (dict(block_size=0), "config.block_size = 0"),
    (dict(mlp_width=0), "config.mlp_width = 0"),
    (dict(hash_bits=16), "config.hash_bits = 16"),
    (dict(dtype="int32"), "config.dtype = int32"),
    (dict(softmax_scale=-1.0), "config.softmax_scale"),
    (dict(budget=dict(recent_tokens=0)), "config: budget.recent_tokens = 0"),
    (dict(budget=dict(heavy_fraction=2.0)), "budget.heavy_fraction = 2"),
    (dict(kv_layout=5), "config.kv_layout = 5"),
])
def test_bad_config_raises_with_message(kwargs, message):
    args = dict(num_layers=1, num_q_heads=8, num_kv_heads=2, head_dim=64, mlp_width=16)
    args.update(kwargs)
    with pytest.raises(hashattn.InvalidArgumentError) as e:
        hashattn.Context(**args)
    assert message in str(e.value)
    assert e.value.status == hashattn.Status.INVALID_ARGUMENT
    assert e.value.status_name == "INVALID_ARGUMENT"
    assert isinstance(e.value, ValueError)


def test_enum_names_are_checked_in_python():
    with pytest.raises(ValueError, match="kv_layout = 'XYZ'"):
        hashattn.Context(1, 2, 1, 16, kv_layout="XYZ")


@pytest.mark.skipif("cuda" in hashattn.version(), reason="this library has CUDA")
def test_cuda_device_without_cuda_build_is_unsupported():
    with pytest.raises(hashattn.UnsupportedError, match="built without CUDA"):
        hashattn.Context(1, 2, 1, 64, dtype="float16", device="cuda:0")


def test_not_ready_before_weights():
    ctx = hashattn.Context(1, 4, 2, 16, dtype="float32", mlp_width=8)
    x = np.zeros((3, 4, 16), np.float32)
    with pytest.raises(hashattn.NotReadyError, match="hash: hash weights are not bound"):
        ctx.hash(0, x)
    assert "not bound" in ctx.last_error


def test_workspace_sizes_and_cache():
    ctx = hashattn.Context(1, 8, 2, 32, dtype="float32", mlp_width=16, block_size=16)
    small = ctx.workspace_size("decode", max_num_seqs=1, max_blocks_per_seq=2)
    big = ctx.workspace_size(hashattn.Op.DECODE, max_num_seqs=1, max_blocks_per_seq=64)
    assert 0 < small < big
    assert ctx.workspace is None
    assert ctx.reserve_workspace("decode", max_blocks_per_seq=64) >= big
    buf = ctx.workspace
    assert isinstance(buf, np.ndarray) and buf.dtype == np.uint8 and buf.nbytes >= big
    ctx.reserve_workspace("cache_write", max_num_tokens=10)
    assert ctx.workspace is buf  # big enough already: no reallocation
    with pytest.raises(hashattn.InvalidArgumentError, match="workspace_size: .*max_num_tokens = -1.*each must be >= 0"):
        ctx.workspace_size("prefill", max_num_tokens=-1)


def test_explicit_workspace_too_small():
    c = build_case(11, seq_lens=[40], hq=4, hkv=2, d=16, m=8)
    tiny = np.empty(8, np.uint8)
    with pytest.raises(hashattn.WorkspaceTooSmallError, match="decode: workspace_size = 8, this call needs"):
        c.ctx.decode(c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables,
                     c.seq_lens, workspace=tiny)
    need = c.ctx.workspace_size("decode", max_num_seqs=1, max_blocks_per_seq=c.block_tables.shape[1])
    out = c.ctx.decode(c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables,
                       c.seq_lens, workspace=np.empty(need, np.uint8))
    ref = c.ctx.decode(c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables,
                       c.seq_lens)
    assert np.array_equal(out, ref)


def test_errors_name_the_argument():
    c = build_case(12, seq_lens=[40, 9], hq=4, hkv=2, d=16, m=8)
    ctx = c.ctx
    args = [c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables, c.seq_lens]

    def decode_with(i, value, **kw):
        a = list(args)
        a[i] = value
        return ctx.decode(*a, **kw)

    cases = [
        (1, c.query.astype(np.float64), "decode: query.dtype = float64, expected float32"),
        (1, c.query[:, :3], "decode: query.shape[1] = 3, expected 4"),
        (1, c.query[0], "decode: query.ndim = 2, expected 3"),
        (1, c.query[:, :, ::2], "decode: query.shape[2] = 8, expected 16"),
        (2, c.key_cache[..., :8], "decode: key_cache.shape[3] = 8, expected 16"),
        (3, c.value_cache[:-1], "decode: value_cache.shape[0]"),
        (4, c.sig_cache.astype(np.int32), "decode: signature_cache.dtype = int32, expected uint32"),
        (5, c.block_tables.astype(np.int64), "decode: block_tables.dtype = int64, expected int32"),
        (6, np.array([40, 9, 1], np.int32), "decode: seq_lens.shape[0] = 3, expected 2"),
        (6, np.array([40, 999], np.int32), "decode: seq_lens[1] = 999 is outside"),
        (0, 7, "decode: layer = 7 is outside [0, 2)"),
    ]
    for i, value, message in cases:
        with pytest.raises(hashattn.InvalidArgumentError) as e:
            decode_with(i, value)
        assert message in str(e.value), (message, str(e.value))
        assert e.value.message == ctx.last_error

    bt = c.block_tables.copy()
    bt[1, 0] = 500
    with pytest.raises(hashattn.InvalidArgumentError, match=r"block_tables\[1\]\[0\] = 500 is outside"):
        decode_with(5, bt)
    with pytest.raises(hashattn.InvalidArgumentError, match="decode: output.dtype = float16"):
        decode_with(1, c.query, output=np.empty((2, 4, 16), np.float16))
    with pytest.raises(hashattn.InvalidArgumentError, match="selected_counts.shape"):
        decode_with(1, c.query, selected_counts=np.zeros((2, 4), np.int32))  # Hsel = Hkv = 2
    with pytest.raises(hashattn.InvalidArgumentError, match="decode: budget.sink_tokens = -1"):
        decode_with(1, c.query, budget=dict(sink_tokens=-1))
    with pytest.raises(hashattn.InvalidArgumentError, match="strides"):
        decode_with(1, np.asfortranarray(c.query))  # innermost not contiguous
    with pytest.raises(hashattn.InvalidArgumentError, match="key_cache.strides"):
        decode_with(2, c.key_cache[:, ::-1])  # negative stride


def test_cache_write_and_hash_errors():
    c = build_case(13, seq_lens=[20], hq=4, hkv=2, d=16, m=8, block_size=4)
    ctx = c.ctx
    k = c.keys[:3]
    bad_slots = np.array([0, 1, 10 ** 6], np.int64)
    with pytest.raises(hashattn.InvalidArgumentError,
                       match=r"cache_write: slot_mapping\[2\] = 1000000 is outside"):
        ctx.cache_write(c.layer, k, k, c.key_cache, c.value_cache, c.sig_cache, bad_slots)
    with pytest.raises(hashattn.InvalidArgumentError, match="slot_mapping.dtype = int32, expected int64"):
        ctx.cache_write(c.layer, k, k, c.key_cache, c.value_cache, c.sig_cache,
                        np.arange(3, dtype=np.int32))
    with pytest.raises(hashattn.InvalidArgumentError, match="cache_write: value.shape\\[0\\] = 2"):
        ctx.cache_write(c.layer, k, k[:2], c.key_cache, c.value_cache, c.sig_cache,
                        np.arange(3, dtype=np.int64))
    with pytest.raises(hashattn.InvalidArgumentError, match="SIGNATURES_ONLY but signature_cache is NULL"):
        ctx.cache_write(c.layer, k, None, None, None, None, np.arange(3, dtype=np.int64),
                        signatures_only=True)
    with pytest.raises(hashattn.InvalidArgumentError, match="hash: input.shape\\[1\\] = 2, expected 4"):
        ctx.hash(0, np.zeros((5, 2, 16), np.float32), "query")
    with pytest.raises(hashattn.InvalidArgumentError, match="hash: signatures.dtype = int32"):
        ctx.hash(0, np.zeros((5, 4, 16), np.float32), signatures=np.zeros((5, 4), np.int32))
    # refused calls leave the caches untouched
    before = c.key_cache.copy()
    with pytest.raises(hashattn.InvalidArgumentError):
        ctx.cache_write(c.layer, k + 1, k, c.key_cache, c.value_cache, c.sig_cache, bad_slots)
    assert np.array_equal(before, c.key_cache)


def test_query_signature_errors_name_the_argument():
    if hashattn.abi_version() < (1, 2):
        pytest.skip(f"the library is ABI {hashattn.abi_version()}: query signatures are 1.2")
    c = build_case(15, seq_lens=[20, 9], hq=4, hkv=2, d=16, m=8, block_size=4)
    ctx = c.ctx
    k = c.keys[:3]
    write = (c.layer, k, k, c.key_cache, c.value_cache, c.sig_cache, np.arange(3, dtype=np.int64))
    before = [x.copy() for x in (c.key_cache, c.value_cache, c.sig_cache)]
    # both or neither: signatures without queries (queries without signatures are allocated)
    with pytest.raises(hashattn.InvalidArgumentError,
                       match="cache_write: query is NULL but query_signatures is set"):
        ctx.cache_write(*write, query_signatures=np.zeros((2, 4), np.uint32))
    cases = [
        (dict(query=c.query[:, :3]), "cache_write: query.shape[1] = 3, expected 4"),
        (dict(query=c.query.astype(np.float16)), "cache_write: query.dtype = float16"),
        (dict(query=c.query, query_signatures=np.zeros((3, 4), np.uint32)),
         "cache_write: query_signatures.shape[0] = 3, expected 2"),
        (dict(query=c.query, query_signatures=np.zeros((2, 4), np.int32)),
         "cache_write: query_signatures.dtype = int32, expected uint32"),
    ]
    for kw, message in cases:
        with pytest.raises(hashattn.InvalidArgumentError) as e:
            ctx.cache_write(*write, **kw)
        assert message in str(e.value), (message, str(e.value))
    # refused calls write nothing
    for a, b in zip((c.key_cache, c.value_cache, c.sig_cache), before):
        assert np.array_equal(a, b)

    args = (c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables, c.seq_lens)
    cases = [
        (np.zeros((3, 4), np.uint32), "decode: query_signatures.shape[0] = 3, expected 2"),
        (np.zeros((2, 2), np.uint32), "decode: query_signatures.shape[1] = 2, expected 4"),
        (np.zeros((2, 4), np.int32), "decode: query_signatures.dtype = int32, expected uint32"),
        (np.zeros((2, 4, 1), np.uint32), "decode: query_signatures.ndim = 3, expected 2"),
    ]
    for sigs, message in cases:
        with pytest.raises(hashattn.InvalidArgumentError) as e:
            ctx.decode(*args, query_signatures=sigs)
        assert message in str(e.value), (message, str(e.value))


def test_query_signatures_refused_by_an_older_library(monkeypatch):
    """ABI 1.2 arguments on a 1.1 library raise before the call, naming the ABI; the same
    calls without them still work (the longer structs' new fields stay NULL)."""
    c = build_case(16, seq_lens=[20], hq=4, hkv=2, d=16, m=8, block_size=4)
    if hashattn.abi_version() >= (1, 2):
        monkeypatch.setattr(c.ctx, "_abi_minor", 1)  # what a 1.1 library reports
    k = c.keys[:3]
    write = (c.layer, k, k, c.key_cache, c.value_cache, c.sig_cache, np.arange(3, dtype=np.int64))
    before = [x.copy() for x in (c.key_cache, c.value_cache, c.sig_cache)]
    sigs = np.zeros((1, 4), np.uint32)
    for kw, name in ((dict(query=c.query), "query"),
                     (dict(query=c.query, query_signatures=sigs), "query"),
                     (dict(query_signatures=sigs), "query_signatures")):
        with pytest.raises(hashattn.UnsupportedError,
                           match=rf"cache_write: {name} needs ABI 1\.2; "
                                 r".*libhashattn\S* has ABI 1\.[01], which is older"):
            c.ctx.cache_write(*write, **kw)
    for a, b in zip((c.key_cache, c.value_cache, c.sig_cache), before):
        assert np.array_equal(a, b)
    args = (c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables, c.seq_lens)
    with pytest.raises(hashattn.UnsupportedError,
                       match=r"decode: query_signatures needs ABI 1\.2; .* has ABI 1\.[01], which is older"):
        c.ctx.decode(*args, query_signatures=sigs)
    assert c.ctx.cache_write(*write) is None
    c.ctx.decode(*args)


def test_prefill_errors():
    c = build_case(14, seq_lens=[20, 7], hq=4, hkv=2, d=16, m=8)
    q, _ = make_input(c.rng, (10, 4, 16), "float32")
    args = [c.layer, q, c.key_cache, c.value_cache, c.block_tables, c.seq_lens]
    with pytest.raises(hashattn.InvalidArgumentError, match="query_start_loc\\[2\\] = 9, expected num_tokens = 10"):
        c.ctx.prefill(*args, np.array([0, 5, 9], np.int32))
    with pytest.raises(hashattn.InvalidArgumentError, match="sequence 1 has 8 query rows but seq_lens\\[1\\] = 7"):
        c.ctx.prefill(*args, np.array([0, 2, 10], np.int32))
    with pytest.raises(hashattn.InvalidArgumentError, match="query_start_loc.dtype = int64"):
        c.ctx.prefill(*args, np.array([0, 5, 10], np.int64))


def test_closed_context_refuses_calls():
    ctx = hashattn.Context(1, 2, 1, 16, dtype="float32", mlp_width=8)
    ctx.close()
    with pytest.raises(ValueError, match="closed"):
        ctx.workspace_size("hash")


def test_budget_of():
    assert hashattn.Budget.of({"sink_tokens": 1}) == hashattn.Budget(1, 128, -1, 0.0625)
    c = hashattn.Budget(4, 5, 6, 0.5).to_c()
    assert c.struct_size == ctypes.sizeof(hashattn.abi.Budget)
    assert hashattn.Budget.of(c) == hashattn.Budget(4, 5, 6, 0.5)
    with pytest.raises(TypeError):
        hashattn.Budget.of(3)
