"""The run-path operations through the adapter against the numpy reference:
signatures, cache writes, selection (ties to newer tokens), attention, prefill."""
from __future__ import annotations

import numpy as np
import pytest

import hashattn
import reference as ref
from cases import TOL, build_case, make_input, reference_decode, values

DTYPES = ["float32", "float16", "bfloat16"]


def _near(a: np.ndarray, b: np.ndarray, dtype: str) -> None:
    tol = TOL[dtype]
    err = np.abs(np.asarray(a, np.float64) - b)
    assert np.all(err <= tol * (1.0 + np.abs(b))), f"max error {err.max()} (tol {tol})"


# ---- hash --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sig_layout", ["per_query_head", "per_kv_head"])
def test_hash_matches_reference(dtype, sig_layout):
    seed = 100 + DTYPES.index(dtype)
    c = build_case(seed, dtype=dtype, hq=6, hkv=2, d=24, m=20, sig_layout=sig_layout,
                   seq_lens=[1])
    x, xv = make_input(c.rng, (57, 6, 24), dtype)
    sig = c.ctx.hash(c.layer, x, "query")
    assert isinstance(sig, np.ndarray) and sig.dtype == np.uint32 and sig.shape == (57, 6)
    want, close = ref.signatures(c.wq, c.layer, xv, list(range(6)))
    assert np.array_equal(sig[~close], want[~close])

    k, kv = make_input(c.rng, (33, 2, 24), dtype)
    ksig = c.ctx.hash(c.layer, k, hashattn.HashSide.KEY)
    heads = [0, 1] if sig_layout == "per_kv_head" else [h // 3 for h in range(6)]
    assert ksig.shape == (33, len(heads))
    want, close = ref.signatures(c.wk, c.layer, kv, heads)
    assert np.array_equal(ksig[~close], want[~close])
    assert close.mean() < 0.05


def test_hash_into_strided_output_and_empty_input():
    c = build_case(104, hq=4, hkv=4, d=16, m=8, seq_lens=[1])
    x, _ = make_input(c.rng, (9, 4, 16), "float32")
    big = np.zeros((9, 10), np.uint32)
    view = big[:, 2:6]                      # row stride 10: written in place, no copy
    out = c.ctx.hash(c.layer, x, signatures=view)
    assert out is view
    assert np.array_equal(big[:, 2:6], c.ctx.hash(c.layer, x))
    assert not big[:, :2].any() and not big[:, 6:].any()
    empty = c.ctx.hash(c.layer, np.zeros((0, 4, 16), np.float32))
    assert empty.shape == (0, 4)


# ---- cache_write -------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cache_write_places_rows_and_signatures(layout, dtype):
    seed = 200 + DTYPES.index(dtype)
    c = build_case(seed, dtype=dtype, layout=layout, hq=4, hkv=2, d=16, m=8, block_size=4,
                   seq_lens=[5])
    kc_bits = (c.key_cache.array if isinstance(c.key_cache, hashattn.Reinterpret) else c.key_cache)
    before = kc_bits.copy()
    keys, kv = make_input(c.rng, (6, 2, 16), dtype)
    vals, vv = make_input(c.rng, (6, 2, 16), dtype)
    # a padding slot (-1), a duplicate slot (the last one wins)
    slots = np.array([8, -1, 13, 13, 0, 19], np.int64)
    c.ctx.cache_write(c.layer, keys, vals, c.key_cache, c.value_cache, c.sig_cache, slots)
    kcache, vcache = values(c.key_cache), values(c.value_cache)
    ksig = c.ctx.hash(c.layer, keys, "key")
    for t, s in enumerate(slots):
        if s < 0 or (t == 2):
            continue
        b, o = divmod(int(s), 4)
        for g in range(2):
            krow = kcache[b, o, g] if layout == "NHD" else kcache[b, g, o]
            vrow = vcache[b, o, g] if layout == "NHD" else vcache[b, g, o]
            assert np.array_equal(krow, kv[t, g]) and np.array_equal(vrow, vv[t, g])
        assert np.array_equal(c.sig_cache[b, :, o], ksig[t])
    # every other row untouched
    touched = np.zeros(kc_bits.shape[:3], bool)
    for s in slots[slots >= 0]:
        b, o = divmod(int(s), 4)
        if layout == "NHD":
            touched[b, o, :] = True
        else:
            touched[b, :, o] = True
    assert np.array_equal(kc_bits[~touched], before[~touched])


def test_cache_write_signatures_only_and_kv_only():
    c = build_case(210, hq=4, hkv=2, d=16, m=8, block_size=4, seq_lens=[3])
    keys, _ = make_input(c.rng, (2, 2, 16), "float32")
    slots = np.array([12, 13], np.int64)  # block 3 of 4
    kc = c.key_cache.copy()
    c.ctx.cache_write(c.layer, keys, None, None, None, c.sig_cache, slots, signatures_only=True)
    assert np.array_equal(kc, c.key_cache)
    assert np.array_equal(c.sig_cache[3, :, 0:2].T, c.ctx.hash(c.layer, keys, "key"))
    sig = c.sig_cache.copy()
    c.ctx.cache_write(c.layer, keys, keys, c.key_cache, c.value_cache, None, np.array([14, 15]))
    assert np.array_equal(sig, c.sig_cache)
    assert np.array_equal(c.key_cache[3, 2:4], keys)


def test_dense_only_host_needs_no_weights():
    ctx = hashattn.Context(1, 4, 2, 16, dtype="float32", mlp_width=8, block_size=4)
    kc, vc, _ = ctx.allocate_caches(4)
    rng = np.random.default_rng(5)
    k, kv = make_input(rng, (10, 2, 16), "float32")
    ctx.cache_write(0, k, k, kc, vc, None, np.arange(10, dtype=np.int64))
    q, qv = make_input(rng, (1, 4, 16), "float32")
    bt = np.arange(4, dtype=np.int32)[None]
    out = ctx.decode(0, q, kc, vc, None, bt, np.array([10], np.int32), dense=True)
    for h in range(4):
        want = ref.attend(qv[0, h], kv[:, h // 2].astype(np.float64), kv[:, h // 2].astype(np.float64),
                          ctx.softmax_scale)
        _near(out[0, h], want, "float32")


# ---- decode: selection and attention ------------------------------------------------


DECODE_CASES = [
    # (seed, dtype, hq, hkv, d, m, block, layout, selection, sig_layout, seq_lens)
    (300, "float32", 8, 2, 32, 32, 16, "NHD", "group", "per_query_head", [97]),
    (301, "float32", 8, 2, 32, 32, 16, "HND", "per_head", "per_query_head", [160, 33, 0, 250]),
    (302, "float16", 8, 4, 16, 16, 1, "NHD", "group", "per_kv_head", [70, 131]),
    (303, "bfloat16", 4, 1, 64, 32, 7, "HND", "per_head", "per_kv_head", [200]),
    (304, "float32", 4, 4, 16, 8, 5, "NHD", "group", "per_query_head",
     [30 + 11 * i for i in range(12)]),
    (305, "bfloat16", 6, 2, 16, 16, 16, "NHD", "group", "per_query_head",
     [17 * i for i in range(17)]),
]


def _decode_id(p):
    seed, dtype, hq, hkv, d, m, bs, layout, sel, sig, lens = p
    return (f"decode(dtype={dtype},hq={hq},hkv={hkv},d={d},block={bs},{layout},{sel},{sig},"
            f"batch={len(lens)},seed={seed})")


@pytest.mark.parametrize("p", DECODE_CASES, ids=[_decode_id(p) for p in DECODE_CASES])
def test_decode_matches_reference(p):
    seed, dtype, hq, hkv, d, m, bs, layout, sel, sig, lens = p
    c = build_case(seed, dtype=dtype, hq=hq, hkv=hkv, d=d, m=m, block_size=bs, layout=layout,
                   selection=sel, sig_layout=sig, seq_lens=lens)
    budget = dict(sink_tokens=4, recent_tokens=8, heavy_count=-1, heavy_fraction=0.125)
    out, idx, cnt = c.ctx.decode(c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache,
                                 c.block_tables, c.seq_lens, budget=budget, return_selection=True)
    q_sigs = c.ctx.hash(c.layer, c.query, "query")
    want, sels = reference_decode(c, q_sigs, sink=4, recent=8, heavy_fraction=0.125)
    hsel = c.ctx.num_sel_heads
    assert idx.shape == (len(lens), hsel, c.block_tables.shape[1] * bs)
    assert cnt.shape == (len(lens), hsel)
    for s in range(len(lens)):
        for u in range(hsel):
            n = int(cnt[s, u])
            assert n == len(sels[s][u]), (s, u)
            assert idx[s, u, :n].tolist() == sels[s][u], (s, u)
            assert np.all(idx[s, u, n:] == -1)  # left alone
    _near(values(out), want, dtype)
    # sparsity happened where the sequence is long enough
    for s, n in enumerate(lens):
        k = int(0.125 * n)
        if n > 12 + k:
            assert np.all(cnt[s] == 12 + k)


def test_decode_selection_ties_go_to_newer_tokens():
    """Key signatures are crafted so that scores tie at the cut-off."""
    c = build_case(320, hq=4, hkv=2, d=16, m=16, block_size=8, selection="per_head",
                   sig_layout="per_query_head", seq_lens=[64])
    q_sigs = c.ctx.hash(c.layer, c.query, "query")
    n, sink, recent, heavy = 64, 2, 2, 9
    # candidate j gets score 32 - flips[j]; only three distinct scores -> big ties
    flips = np.array([(j * 7) % 3 for j in range(n)])
    for h in range(4):
        for j in range(n):
            mask = np.uint32((1 << int(flips[j])) - 1) if flips[j] else np.uint32(0)
            b, o = int(c.block_tables[0, j // 8]), j % 8
            c.sig_cache[b, h, o] = np.uint32(q_sigs[0, h]) ^ mask
    out, idx, cnt = c.ctx.decode(c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache,
                                 c.block_tables, c.seq_lens,
                                 budget=hashattn.Budget(sink, recent, heavy),
                                 return_selection=True)
    cand = np.arange(sink, n - recent)
    best = cand[flips[cand] == 0]            # score 32: 20 candidates, more than 9
    assert len(best) > heavy
    expect = sorted(set(range(sink)) | set(range(n - recent, n)) | set(best[-heavy:].tolist()))
    for h in range(4):
        assert int(cnt[0, h]) == sink + recent + heavy
        assert idx[0, h, :cnt[0, h]].tolist() == expect
    want, sels = reference_decode(c, q_sigs, sink=sink, recent=recent, heavy_count=heavy)
    assert sels[0][0] == expect
    _near(out, want, "float32")


def test_decode_group_selection_sums_group_scores():
    c = build_case(321, hq=4, hkv=1, d=16, m=16, block_size=4, selection="group",
                   sig_layout="per_query_head", seq_lens=[40])
    q_sigs = c.ctx.hash(c.layer, c.query, "query")
    rng = np.random.default_rng(321)
    # head h disagrees on a random number of bits per token; the group sum decides
    for j in range(40):
        b, o = int(c.block_tables[0, j // 4]), j % 4
        for h in range(4):
            k = int(rng.integers(0, 6))
            c.sig_cache[b, h, o] = np.uint32(q_sigs[0, h]) ^ np.uint32((1 << k) - 1)
    _, idx, cnt = c.ctx.decode(c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache,
                               c.block_tables, c.seq_lens, budget=hashattn.Budget(1, 3, 6),
                               return_selection=True)
    _, sels = reference_decode(c, q_sigs, sink=1, recent=3, heavy_count=6)
    assert cnt.shape == (1, 1) and int(cnt[0, 0]) == 10
    assert idx[0, 0, :10].tolist() == sels[0][0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_full_budget_equals_dense_and_prefill(dtype):
    c = build_case(330 + DTYPES.index(dtype), dtype=dtype, hq=8, hkv=2, d=32, m=16,
                   block_size=16, seq_lens=[300, 45, 1, 129])
    args = (c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables, c.seq_lens)
    dense = values(c.ctx.decode(*args, dense=True))
    full = values(c.ctx.decode(*args, budget=hashattn.Budget(4, 4, -1, 1.0)))
    huge = values(c.ctx.decode(*args, budget=hashattn.Budget(0, 1, 10 ** 6)))
    assert np.array_equal(dense, full) and np.array_equal(dense, huge)
    # the last prefill row of each sequence attends to the same tokens in the same order
    qsl = np.arange(len(c.seq_lens) + 1, dtype=np.int32)
    pre = values(c.ctx.prefill(c.layer, c.query, c.key_cache, c.value_cache, c.block_tables,
                               c.seq_lens, qsl))
    assert np.array_equal(dense, pre)
    want, _ = reference_decode(c, None, sink=0, recent=1, dense_flag=True)
    _near(dense, want, dtype)
    # and sparse differs from dense on the long sequence
    sparse = values(c.ctx.decode(*args, budget=hashattn.Budget(4, 4, 8)))
    assert not np.array_equal(sparse[0], dense[0])


def test_decode_context_budget_and_override():
    budget = dict(sink_tokens=3, recent_tokens=5, heavy_count=7)
    c = build_case(340, hq=4, hkv=2, d=16, m=8, seq_lens=[90], budget=budget)
    args = (c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables, c.seq_lens)
    _, _, cnt = c.ctx.decode(*args, return_selection=True)
    assert np.all(cnt == 15)
    _, _, cnt = c.ctx.decode(*args, budget=dict(sink_tokens=1, recent_tokens=1, heavy_count=2),
                             return_selection=True)
    assert np.all(cnt == 4)


def test_decode_empty_sequences_give_zeros():
    c = build_case(341, hq=4, hkv=2, d=16, m=8, seq_lens=[0, 20, 0])
    out, idx, cnt = c.ctx.decode(c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache,
                                 c.block_tables, c.seq_lens, return_selection=True)
    assert not out[0].any() and not out[2].any() and out[1].any()
    assert cnt[0].tolist() == [0, 0] and np.all(idx[0] == -1)
    none = c.ctx.decode(c.layer, c.query[:0], c.key_cache, c.value_cache, c.sig_cache,
                        c.block_tables[:0], c.seq_lens[:0])
    assert none.shape == (0, 4, 16)


def test_decode_strided_inputs_and_outputs_no_copies():
    """Queries and caches as views into bigger buffers; outputs into a view."""
    c = build_case(342, hq=4, hkv=2, d=16, m=8, block_size=4, seq_lens=[50, 23])
    args_ref = (c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables,
                c.seq_lens)
    want = c.ctx.decode(*args_ref, budget=hashattn.Budget(2, 2, 5))
    qbuf = np.zeros((2, 6, 20), np.float32)
    qbuf[:, 1:5, 2:18] = c.query
    kbuf = np.zeros((c.num_blocks, 4, 3, 16), np.float32)   # an extra head slot
    kbuf[:, :, :2] = c.key_cache
    vbuf = np.zeros((c.num_blocks + 1, 4, 2, 16), np.float32)
    vbuf[1:] = c.value_cache
    btbuf = np.zeros((2, c.block_tables.shape[1] + 3), np.int32)
    btbuf[:, :c.block_tables.shape[1]] = c.block_tables
    obuf = np.full((3, 4, 40), 7.0, np.float32)
    oview = obuf[::2, :, 4:20]
    got = c.ctx.decode(c.layer, qbuf[:, 1:5, 2:18], kbuf[:, :, :2], vbuf[1:], c.sig_cache,
                       btbuf, c.seq_lens, output=oview, budget=hashattn.Budget(2, 2, 5))
    assert got is oview
    assert np.array_equal(obuf[::2, :, 4:20], want)
    assert np.all(obuf[1] == 7.0) and np.all(obuf[:, :, :4] == 7.0)


def test_decode_is_deterministic():
    c = build_case(343, hq=8, hkv=2, d=32, m=16, seq_lens=[400, 77])
    args = (c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables, c.seq_lens)
    a = c.ctx.decode(*args, return_selection=True, budget=hashattn.Budget(8, 8, -1, 0.1))
    b = c.ctx.decode(*args, return_selection=True, budget=hashattn.Budget(8, 8, -1, 0.1))
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


# ---- ABI 1.2: cache_write hashes the step's queries, decode takes their signatures ----


def _bits(x: object) -> np.ndarray:
    """The raw array of an operand (the uint16 bits of a bfloat16 wrapper)."""
    return x.array if isinstance(x, hashattn.Reinterpret) else x


def _twin(x: object) -> object:
    """A copy of an operand, wrapped like it."""
    if isinstance(x, hashattn.Reinterpret):
        return hashattn.Reinterpret(x.array.copy(), "bfloat16")
    return x.copy()


def _needs_abi_1_2():
    if hashattn.abi_version() < (1, 2):
        pytest.skip(f"the library is ABI {hashattn.abi_version()}: query signatures are 1.2")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_queries", [1, 3, 17])
def test_cache_write_query_signatures_equal_hash(dtype, num_queries):
    """query_signatures == hash(query side) bit for bit, for fewer or more query rows than
    key rows; the K/V/signature writes are the same as without queries."""
    _needs_abi_1_2()
    seed = 220 + 3 * DTYPES.index(dtype) + num_queries
    c = build_case(seed, dtype=dtype, hq=6, hkv=2, d=24, m=20, block_size=4, seq_lens=[9])
    keys, _ = make_input(c.rng, (5, 2, 24), dtype)
    vals, _ = make_input(c.rng, (5, 2, 24), dtype)
    query, _ = make_input(c.rng, (num_queries, 6, 24), dtype)
    slots = np.array([9, 10, -1, 21, 10], np.int64)
    twin = [_twin(x) for x in (c.key_cache, c.value_cache, c.sig_cache)]
    c.ctx.cache_write(c.layer, keys, vals, *twin, slots)
    qsig = c.ctx.cache_write(c.layer, keys, vals, c.key_cache, c.value_cache, c.sig_cache,
                             slots, query=query)
    assert isinstance(qsig, np.ndarray) and qsig.dtype == np.uint32
    assert qsig.shape == (num_queries, 6)
    assert np.array_equal(qsig, c.ctx.hash(c.layer, query, "query"))
    for a, b in zip((c.key_cache, c.value_cache, c.sig_cache), twin):
        assert np.array_equal(_bits(a), _bits(b))
    # the other layer's query MLPs give other signatures: the layer is honoured
    other = c.ctx.cache_write(0, keys, vals, *twin, slots, query=query)
    assert np.array_equal(other, c.ctx.hash(0, query, "query"))
    assert not np.array_equal(other, qsig)


def test_cache_write_query_signatures_strided_signatures_only_and_empty():
    _needs_abi_1_2()
    c = build_case(230, hq=4, hkv=2, d=16, m=8, block_size=4, seq_lens=[6])
    keys, _ = make_input(c.rng, (2, 2, 16), "float32")
    query, _ = make_input(c.rng, (3, 4, 16), "float32")
    big = np.zeros((3, 9), np.uint32)
    view = big[:, 3:7]                         # written in place, no copy
    qbuf = np.zeros((3, 6, 20), np.float32)    # a strided query: no copy either
    qbuf[:, 1:5, 2:18] = query
    got = c.ctx.cache_write(c.layer, keys, None, None, None, c.sig_cache,
                            np.array([12, 13], np.int64), signatures_only=True,
                            query=qbuf[:, 1:5, 2:18], query_signatures=view)
    assert got is view
    assert np.array_equal(big[:, 3:7], c.ctx.hash(c.layer, query))
    assert not big[:, :3].any() and not big[:, 7:].any()
    assert np.array_equal(c.sig_cache[3, :, 0:2].T, c.ctx.hash(c.layer, keys, "key"))
    # no key rows this step, queries only; and no queries
    sigs = c.ctx.cache_write(c.layer, keys[:0], keys[:0], c.key_cache, c.value_cache,
                             c.sig_cache, np.zeros(0, np.int64), query=query)
    assert np.array_equal(sigs, c.ctx.hash(c.layer, query))
    none = c.ctx.cache_write(c.layer, keys, keys, c.key_cache, c.value_cache, c.sig_cache,
                             np.array([14, 15], np.int64), query=query[:0])
    assert none.shape == (0, 4)


@pytest.mark.parametrize("p", DECODE_CASES, ids=[_decode_id(p) for p in DECODE_CASES])
def test_decode_with_query_signatures_is_bit_identical(p):
    """A decode step as a 1.2 host runs it: cache_write hashes the step's queries, decode
    takes their signatures; output and selections equal decode hashing query itself."""
    _needs_abi_1_2()
    seed, dtype, hq, hkv, d, m, bs, layout, sel, sig, lens = p
    c = build_case(seed, dtype=dtype, hq=hq, hkv=hkv, d=d, m=m, block_size=bs, layout=layout,
                   selection=sel, sig_layout=sig, seq_lens=lens)
    # rewrite the sequences' tokens (same bits) with this step's queries
    qsig = c.ctx.cache_write(c.layer, c.keys, c.vals, c.key_cache, c.value_cache, c.sig_cache,
                             c.slots, query=c.query)
    args = (c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables, c.seq_lens)
    budget = hashattn.Budget(4, 8, -1, 0.125)
    want = c.ctx.decode(*args, budget=budget, return_selection=True)
    got = c.ctx.decode(*args, budget=budget, return_selection=True, query_signatures=qsig)
    for x, y in zip(got, want):
        assert np.array_equal(_bits(x), _bits(y))


def test_decode_uses_the_given_query_signatures():
    """Signatures other than query's steer the selection (decode reads them, it does not
    hash query), as the reference does with the same signatures; dense never reads them."""
    _needs_abi_1_2()
    c = build_case(350, hq=4, hkv=2, d=16, m=16, block_size=8, selection="per_head",
                   seq_lens=[120, 64])
    args = (c.layer, c.query, c.key_cache, c.value_cache, c.sig_cache, c.block_tables, c.seq_lens)
    budget = hashattn.Budget(2, 2, 9)
    own = c.ctx.hash(c.layer, c.query, "query")
    other = ~own
    out, idx, cnt = c.ctx.decode(*args, budget=budget, return_selection=True,
                                 query_signatures=other)
    want, sels = reference_decode(c, other, sink=2, recent=2, heavy_count=9)
    for s in range(2):
        for h in range(4):
            assert idx[s, h, :cnt[s, h]].tolist() == sels[s][h], (s, h)
    _near(out, want, "float32")
    _, idx_own, _ = c.ctx.decode(*args, budget=budget, return_selection=True)
    assert not np.array_equal(idx, idx_own)
    dense = c.ctx.decode(*args, dense=True)
    assert np.array_equal(c.ctx.decode(*args, dense=True, query_signatures=other), dense)


# ---- prefill -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype,layout,block", [("float32", "NHD", 16), ("float16", "HND", 3),
                                                ("bfloat16", "NHD", 1)])
def test_prefill_matches_reference(dtype, layout, block):
    c = build_case(400 + block, dtype=dtype, hq=4, hkv=2, d=16, m=8, block_size=block,
                   layout=layout, seq_lens=[37, 5, 0, 19])
    rows = np.array([37, 2, 0, 6])          # whole prompt, chunks, an empty sequence
    qsl = np.concatenate([[0], np.cumsum(rows)]).astype(np.int32)
    q, qv = make_input(c.rng, (int(rows.sum()), 4, 16), dtype)
    out = c.ctx.prefill(c.layer, q, c.key_cache, c.value_cache, c.block_tables, c.seq_lens, qsl)
    want = ref.prefill(qv, values(c.key_cache), values(c.value_cache), c.block_tables,
                       c.seq_lens, qsl, layout=layout, block_size=block, group=2,
                       scale=c.ctx.softmax_scale)
    _near(values(out), want, dtype)
