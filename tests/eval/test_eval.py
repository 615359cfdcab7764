#!/usr/bin/env python3
"""Tests of hashattn-eval's parts (tools/eval/hashattn_eval) that need no model.

- rdata: R serialization written here (save() files, gzip/bzip2/xz, and a lazy-load
  database with its index) read back, NA and UTF-8 strings, refusals;
- passkey: prompt length, key placement and answer, determinism, refusals;
- stats: the block bootstrap on known data;
- needle-text (scripts/needle-text, the retrieval fine-tune's documents): separators,
  each document ends in its number, which sits in the text before the question,
  lengths, determinism, none of the passkey prompts' wording;
- selection-stats (tools/eval/hashattn-selection-stats): its tie rule and bit agreement,
  its reader of one-sequence fp32 captures; copy-probe's token classes (torch);
- select (torch; "skipped: no torch" without it): every method attends to exactly
  T(n) = sink + recent + floor(f n) tokens per row; hash selection equals a direct
  transcription of the plugin's counting selection (kernels/cpu/select.c) with many
  ties, per head and group; Quest equals a brute-force page picker; agreement equals
  32 - popcount(xor).

Ends with "eval: N passed, N failed, N skipped" and "eval: OK" or "eval: FAILED".
Seeds are fixed (printed with each random case).
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
import sys
import tempfile
import traceback
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools", "eval"))

import numpy as np  # noqa: E402

from hashattn_eval import passkey, rdata, stats  # noqa: E402

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

RESULTS = {"passed": 0, "failed": 0, "skipped": 0}


def case(name, needs_torch=False):
    def wrap(fn):
        if needs_torch and not HAVE_TORCH:
            print(f"SKIP {name}: skipped: no torch")
            RESULTS["skipped"] += 1
            return fn
        try:
            fn()
            print(f"PASS {name}")
            RESULTS["passed"] += 1
        except Exception:
            print(f"FAIL {name}")
            traceback.print_exc(file=sys.stdout)
            RESULTS["failed"] += 1
        return fn
    return wrap


# ---- a small XDR writer for the lazy-load index (vectors with names) ----------------------


def _charsxp(s):
    if s is None:
        return struct.pack(">ii", 9, -1)
    b = s.encode("utf-8")
    return struct.pack(">ii", 9 | ((1 << 3) << 12), len(b)) + b


def _names_attr(names):
    return (struct.pack(">i", 2 | (1 << 10)) + struct.pack(">i", 1) + _charsxp("names")
            + struct.pack(">ii", 16, len(names)) + b"".join(_charsxp(n) for n in names)
            + struct.pack(">i", 254))


def _vec(items, names=None):
    """VECSXP of already-serialized items, with optional names."""
    flags = 19 | ((1 << 9) if names else 0)
    out = struct.pack(">ii", flags, len(items)) + b"".join(items)
    return out + (_names_attr(names) if names else b"")


def _ints(values):
    return struct.pack(">ii", 13, len(values)) + struct.pack(f">{len(values)}i", *values)


def _strs(values):
    return struct.pack(">ii", 16, len(values)) + b"".join(_charsxp(s) for s in values)


def _stream(body):
    return b"X\n" + struct.pack(">iii", 3, 0x040201, 0x030500) + struct.pack(">i", 5) + \
        b"UTF-8" + body


NOVEL_A = ["CHAPTER I", "", "It is a truth \u00e9tonnant,", None, "the end"]
NOVEL_B = ["short"] * 3


@case("rdata: save() stream, gzip/bzip2/xz/none, version 2 and 3")
def _():
    with tempfile.TemporaryDirectory() as d:
        for version in (2, 3):
            raw = rdata.serialize_strings({"a": NOVEL_A, "b": NOVEL_B}, version=version)
            for name, comp in (("gz", gzip.compress), ("bz", bz2.compress),
                               ("xz", lzma.compress), ("none", lambda b: b)):
                p = os.path.join(d, f"x{version}.{name}.rda")
                with open(p, "wb") as f:
                    f.write(comp(raw))
                got = rdata.read_rda(p)
                assert list(got) == ["a", "b"], list(got)
                assert list(got["a"]) == NOVEL_A, got["a"]
                assert list(got["b"]) == NOVEL_B


@case("rdata: lazy-load database (zlib records, as r-cran-janeaustenr ships)")
def _():
    with tempfile.TemporaryDirectory() as d:
        base = os.path.join(d, "Rdata")
        recs, where = [], []
        off = 0
        for vec in (NOVEL_A, NOVEL_B):
            payload = _stream(_strs(vec))
            rec = struct.pack(">I", len(payload)) + zlib.compress(payload)
            where.append(_ints([off, len(rec)]))
            recs.append(rec)
            off += len(rec)
        with open(base + ".rdb", "wb") as f:
            f.write(b"".join(recs))
        index = _vec([_vec(where, ["emma", "persuasion"]), _vec([], []),
                      struct.pack(">ii", 10, 1) + struct.pack(">i", 1)],
                     ["variables", "references", "compressed"])
        with open(base + ".rdx", "wb") as f:
            f.write(gzip.compress(_stream(index)))
        got = rdata.read_lazyload_db(base)
        assert list(got) == ["emma", "persuasion"]
        assert list(got["emma"]) == NOVEL_A and list(got["persuasion"]) == NOVEL_B


@case("rdata: xz records with a type byte (compress = 3)")
def _():
    payload = _stream(_strs(NOVEL_B))
    rec = struct.pack(">I", len(payload)) + b"Z" + lzma.compress(payload)
    assert list(rdata._lazyload_value(rec, 3)) == NOVEL_B
    rec = struct.pack(">I", len(payload)) + b"2" + bz2.compress(payload)
    assert list(rdata._lazyload_value(rec, 2)) == NOVEL_B


@case("rdata: refusals (ASCII format, truncation, bad length, unknown type)")
def _():
    for bad, why in ((b"A\n" + b"\0" * 20, "XDR"), (_stream(_strs(["abc"]))[:-2], "truncated"),
                     (_stream(struct.pack(">ii", 16, -7)), "negative"),
                     (_stream(struct.pack(">i", 21)), "not supported")):
        try:
            rdata.unserialize(bad)
        except rdata.RDataError as e:
            assert why in str(e), (why, str(e))
        else:
            raise AssertionError(f"accepted {bad[:12]!r}")
    rec = struct.pack(">I", 999) + zlib.compress(_stream(_strs(["x"])))
    try:
        rdata._lazyload_value(rec, 1)
    except rdata.RDataError as e:
        assert "header says 999" in str(e)
    else:
        raise AssertionError("length mismatch accepted")


@case("rdata: ALTREP compact sequence and wrapped string vector")
def _():
    # compact_intseq 5:9 as R writes 5:9 (ALTREP_SXP, info pairlist, state, attr)
    sym = lambda s: struct.pack(">i", 1) + _charsxp(s)  # noqa: E731
    info = (struct.pack(">i", 2) + sym("compact_intseq") + struct.pack(">i", 2) + sym("base")
            + struct.pack(">i", 2) + _ints([13]) + struct.pack(">i", 254))
    state = struct.pack(">ii", 14, 3) + struct.pack(">3d", 5.0, 5.0, 1.0)
    obj = rdata.unserialize(_stream(struct.pack(">i", 238) + info + state
                                    + struct.pack(">i", 254)))
    assert list(obj) == [5, 6, 7, 8, 9], list(obj)
    info = (struct.pack(">i", 2) + sym("wrap_string") + struct.pack(">i", 2) + sym("base")
            + struct.pack(">i", 2) + _ints([16]) + struct.pack(">i", 254))
    state = _vec([_strs(["p", "q"]), _ints([0, 0])])
    obj = rdata.unserialize(_stream(struct.pack(">i", 238) + info + state
                                    + struct.pack(">i", 254)))
    assert list(obj) == ["p", "q"]


# ---- passkey ------------------------------------------------------------------------------


def word_tokenize(s):
    """A toy tokenizer: one id per character (deterministic, any text)."""
    return [ord(c) % 1000 for c in s]


@case("passkey: exact length, answer at the end, key at the requested depth")
def _():
    for context in (600, 1024, 2048):
        prev = -1
        for depth in (0.1, 0.3, 0.5, 0.7, 0.9):
            p = passkey.make_prompt(word_tokenize, context, depth, seed=3, intro_ids=[7])
            assert len(p.ids) == context
            assert p.ids[0] == 7
            assert len(p.key) == 5 and p.key.isdigit() and p.key[0] != "0"
            assert p.ids[-p.answer_len:] == word_tokenize(" " + p.key)
            needle = word_tokenize(passkey.NEEDLE.format(key=p.key))
            assert p.ids[p.key_at:p.key_at + len(needle)] == needle
            assert p.key_at > prev, (depth, p.key_at, prev)
            prev = p.key_at
            filler = context - len(needle) - p.answer_len - len(word_tokenize(passkey.INTRO)) \
                - len(word_tokenize(passkey.QUESTION)) - 1
            frac = (p.key_at - 1 - len(word_tokenize(passkey.INTRO))) / filler
            assert abs(frac - depth) < 0.1 + len(word_tokenize(passkey.FILLER)) / filler, frac


@case("passkey: deterministic, different keys for different seeds, refusals")
def _():
    a = passkey.make_prompt(word_tokenize, 1024, 0.5, seed=1)
    b = passkey.make_prompt(word_tokenize, 1024, 0.5, seed=1)
    c = passkey.make_prompt(word_tokenize, 1024, 0.5, seed=2)
    assert a.ids == b.ids and a.key == b.key
    keys = {passkey.make_key(s, 1024, 0.5) for s in range(20)}
    assert len(keys) > 15 and c.key in keys
    for bad in ((100, 0.5), (1024, 1.5)):
        try:
            passkey.make_prompt(word_tokenize, *bad, seed=0)
        except ValueError:
            pass
        else:
            raise AssertionError(f"accepted {bad}")


@case("needle-text: documents end in their number, other wording than the passkey prompts")
def _():
    import re
    import subprocess
    script = os.path.join(ROOT, "scripts", "needle-text")
    with tempfile.TemporaryDirectory() as d:
        prose = os.path.join(d, "prose.txt")
        with open(prose, "w") as f:
            f.write("A line of some documentation text, with no digits in it.\n" * 3000)
        outs = []
        for seed in (5, 5, 6):
            out = os.path.join(d, f"n{len(outs)}.txt")
            subprocess.run([sys.executable, script, "--out", out, "--docs", "12", "--seed", str(seed),
                            "--min-tokens", "300", "--max-tokens", "900", "--prose", prose],
                           check=True, capture_output=True)
            with open(out) as f:
                outs.append(f.read())
    assert outs[0] == outs[1] and outs[0] != outs[2], "deterministic per seed"
    docs = outs[0].split("<<<doc>>>\n")
    assert docs[-1] == "" and len(docs) == 13, len(docs)
    fillers = [u.strip() + "." for u in passkey.FILLER.split(".") if u.strip()]
    for doc in docs[:-1]:
        m = re.search(r"(\d{4,7})\n$", doc)
        assert m, doc[-80:]
        key = m.group(1)
        assert doc.count(key) >= 2, "the number is in the text and in the answer"
        question = doc.rindex("\n", 0, len(doc) - 1)
        assert doc.index(key) < question, "the number sits in the text before the question"
        assert 300 * 4 - 400 <= len(doc) <= 900 * 4 + 400, len(doc)
        assert "pass key" not in doc.lower()
        assert not any(f in doc for f in fillers), "none of the evaluation's filler sentences"


# ---- stats -----------------------------------------------------------------------------------


@case("stats: block bootstrap mean and interval")
def _():
    r = stats.bootstrap_mean([np.full(300, 0.25), np.full(100, 0.25)], block=64)
    assert r["mean"] == 0.25 and r["lo"] == 0.25 and r["hi"] == 0.25
    assert r["tokens"] == 400 and r["blocks"] == 5 + 2
    rng = np.random.default_rng(5)
    x = [rng.normal(1.0, 1.0, 2048) for _ in range(3)]
    r = stats.bootstrap_mean(x, block=128, seed=1)
    assert abs(r["mean"] - np.concatenate(x).mean()) < 1e-12
    assert r["lo"] < r["mean"] < r["hi"] and r["hi"] - r["lo"] < 0.2, r
    assert stats.bootstrap_mean(x, block=128, seed=1) == r
    e = stats.bootstrap_mean([], block=16)
    assert e["tokens"] == 0


# ---- hashattn-selection-stats (numpy) ----------------------------------------------------------


def _tool(name):
    """tools/eval/NAME (an executable script, no .py) as a module."""
    import importlib.util
    from importlib.machinery import SourceFileLoader
    loader = SourceFileLoader(name.replace("-", "_"), os.path.join(ROOT, "tools", "eval", name))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


@case("selection-stats: its pick is the plugin's rule, agreement is 32 - popcount(xor)")
def _():
    st = _tool("hashattn-selection-stats")
    rng = np.random.default_rng(5)
    for trial in range(20):
        n = int(rng.integers(40, 300))
        scores = rng.integers(0, 6, n)  # few values: many ties
        k = int(rng.integers(1, n))
        got = set(st.pick(scores, k).tolist())
        # ref_select's heavy part with no sink or recent window
        want = set(sorted(range(n), key=lambda j: (-scores[j], -j))[:k])
        assert got == want, (trial, sorted(got ^ want)[:8])
    a = rng.integers(0, 2**32, 64, dtype=np.uint64).astype(np.uint32)
    b = np.uint32(rng.integers(0, 2**32))
    want = [32 - bin(int(x) ^ int(b)).count("1") for x in a]
    assert st.agreement(a, b).tolist() == want


@case("selection-stats: reads a one-sequence fp32 capture (docs/calibration-format.md), refuses fp16")
def _():
    st = _tool("hashattn-selection-stats")
    L, hq, hkv, D, n = 2, 4, 2, 8, 40
    rng = np.random.default_rng(6)
    keys = rng.standard_normal((L, hkv, n, D)).astype(np.float32)
    pos = np.array([10, 25, 39], np.int32)
    qv = rng.standard_normal((L, hq, len(pos), D)).astype(np.float32)

    def record(kind, fields, payload):
        head = struct.pack("<IIQ", kind, 16 + len(fields), len(payload)) + fields
        return head + payload

    def pad8(b):
        return b + bytes(-len(b) % 8)

    def build(key_dtype):
        out = b"HACALIB\0" + struct.pack("<II5iI", 1, 64, L, hq, hkv, D, 32, 0) + bytes(24)
        for layer in range(L):
            for g in range(hkv):  # two pieces, the second first
                for start, count in ((25, n - 25), (0, 25)):
                    rows = keys[layer, g, start:start + count]
                    out += record(1, struct.pack("<iiqiiii", layer, g, 7, start, count, key_dtype, 0),
                                  pad8(rows.tobytes()))
            for h in range(hq):
                top = -np.ones((len(pos), 32), np.int32)
                body = pad8(pos.tobytes()) + pad8(qv[layer, h].tobytes()) + top.tobytes()
                out += record(2, struct.pack("<iiqiiiiii", layer, h, 7, len(pos), 0, 4, 4, 32, 0), body)
        return out

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.calib")
        with open(path, "wb") as f:
            f.write(build(0))
        shape, k, q = st.read_calib(path)
        assert shape == (L, hq, hkv, D)
        for layer in range(L):
            for g in range(hkv):
                assert np.array_equal(k[(layer, g)], keys[layer, g])
            for h in range(hq):
                assert q[(layer, h)][0].tolist() == pos.tolist()
                assert np.array_equal(q[(layer, h)][1], qv[layer, h])
        with open(path, "wb") as f:
            f.write(build(1))
        try:
            st.read_calib(path)
        except SystemExit as e:
            assert "fp16" in str(e), e
        else:
            raise AssertionError("an fp16 capture was accepted")


@case("copy-probe: far copy, recent copy and other next tokens", True)
def _():
    cp = _tool("hashattn-copy-probe")
    #      0  1  2  3  4  5  6  7  8  9
    ids = [5, 6, 9, 9, 9, 9, 5, 6, 5, 7]
    assert cp.copy_class(ids, 6, recent=3) == cp.FAR      # (5, 6) at 0 only, before t - 3
    assert cp.copy_class(ids, 6, recent=6) == cp.RECENT   # now inside the window [0, 6)
    assert cp.copy_class(ids, 8, recent=3) == cp.OTHER    # 5 was never followed by 7
    assert cp.copy_class(ids, 4, recent=1) == cp.RECENT   # (9, 9) at 3
    assert cp.copy_class(ids, 2, recent=1) == cp.OTHER    # 9 first seen at 2


# ---- selection (torch) ------------------------------------------------------------------------


def ref_select(scores, n, sink, recent, k):
    """A transcription of kernels/cpu/select.c: counting selection, ties to the newer
    token; returns the set of positions attended by a row that sees n tokens."""
    if n <= sink + recent + k:
        return set(range(n))
    lo, hi = sink, n - recent
    cand = sorted(range(lo, hi), key=lambda j: (-scores[j], -j))
    return set(range(lo)) | set(cand[:k]) | set(range(hi, n))


def heavy(f, n):
    return int(float(np.float32(f)) * n)


@case("select: hash selection equals the plugin's rule (per head and group, ties)", True)
def _():
    import torch
    from hashattn_eval import select as sel
    seed = 11
    g = torch.Generator().manual_seed(seed)
    hq, hkv, S = 6, 2, 700
    # few distinct bit patterns: many equal scores, so the tie rule is exercised
    base = torch.randint(0, 2, (4, 32), generator=g).bool()
    qb = base[torch.randint(0, 4, (hq, S), generator=g)]
    for compact in (False, True):
        hsig = hkv if compact else hq
        kb = base[torch.randint(0, 4, (hsig, S), generator=g)]
        kb[:, ::7] = torch.randint(0, 2, (hsig, len(range(0, S, 7)), 32), generator=g).bool()
        for f in (1 / 8, 1 / 16, 1 / 32):
            b = sel.Budget(64, 32, f)
            pos = torch.tensor([0, 50, 96, 150, 300, 451, 699])
            for group in (False, True):
                m = sel.hash_mask(qb[:, pos], kb, pos, b, hq // hkv, group)
                qi = sel.pack_bits(qb).tolist()
                ki = sel.pack_bits(kb).tolist()
                for ri, t in enumerate(pos.tolist()):
                    n = t + 1
                    units = range(hkv) if group else range(hq)
                    for u in units:
                        heads = range(u * 3, u * 3 + 3) if group else [u]
                        sc = [sum(32 - bin(qi[h][t] ^ ki[h // 3 if compact else h][j]).count("1")
                                  for h in heads) for j in range(S)]
                        want = ref_select(sc, n, b.sink, b.recent, heavy(f, n))
                        for h in heads:
                            got = set(torch.nonzero(m[h, ri]).flatten().tolist())
                            assert got == want, (seed, compact, f, group, t, h,
                                                 sorted(got ^ want)[:10])


@case("select: every method attends to exactly T(n) tokens per row", True)
def _():
    import torch
    from hashattn_eval import select as sel
    g = torch.Generator().manual_seed(3)
    hq, hkv, S, D = 6, 2, 900, 16
    q = torch.randn(hq, S, D, generator=g)
    k = torch.randn(hkv, S, D, generator=g)
    pos = torch.arange(200, S, 37)
    for f in (1 / 8, 1 / 16, 1 / 32):
        b = sel.Budget(128, 128, f)
        logits = torch.matmul(q[:, pos], k.repeat_interleave(3, 0).transpose(1, 2))
        planes = sel.srp_planes(1, hkv, D, seed=1)[0]
        masks = {
            "oracle": sel.oracle_mask(logits, pos, b),
            "streaming": sel.streaming_mask(pos, S, b, hq),
            "random": sel.random_mask(pos, S, b, hq, torch.Generator().manual_seed(1)),
            "srp": sel.hash_mask(torch.matmul(q[:, pos], planes.repeat_interleave(3, 0)) > 0,
                                 torch.matmul(k, planes) > 0, pos, b, 3, False),
            "quest": sel.quest_mask(q[:, pos], k, pos, b),
        }
        for name, m in masks.items():
            for ri, t in enumerate(pos.tolist()):
                n = t + 1
                want = min(n, b.sink + b.recent + heavy(f, n))
                for h in range(hq):
                    row = m[h, ri]
                    assert int(row.sum()) == want, (name, f, t, h, int(row.sum()), want)
                    assert not bool(row[n:].any()), (name, "future token")
                    if want < n:
                        assert bool(row[:b.sink].all()) and bool(row[n - b.recent:n].all()), name


@case("select: Quest picks whole pages by the min/max bound (brute force)", True)
def _():
    import torch
    from hashattn_eval import select as sel
    g = torch.Generator().manual_seed(8)
    hq, hkv, S, D, page = 2, 1, 640, 8, 16
    q = torch.randn(hq, S, D, generator=g)
    k = torch.randn(hkv, S, D, generator=g)
    b = sel.Budget(32, 32, 1 / 8)
    pos = torch.tensor([300, 457, 639])
    m = sel.quest_mask(q[:, pos], k, pos, b, page)
    for ri, t in enumerate(pos.tolist()):
        n = t + 1
        K = heavy(b.fraction, n)
        for h in range(hq):
            qv = q[h, t]
            pages = []
            for p0 in range(0, S, page):
                toks = [j for j in range(p0, min(p0 + page, S)) if b.sink <= j < n - b.recent]
                if not toks:
                    continue
                kp = k[0, p0:p0 + page]
                ub = float(torch.maximum(qv * kp.min(0).values, qv * kp.max(0).values).sum())
                pages.append((ub, p0, toks))
            pages.sort(key=lambda x: (-x[0], -x[1]))
            want = set(range(b.sink)) | set(range(n - b.recent, n))
            left = K
            for _, _, toks in pages:
                take = sorted(toks)[-left:] if left < len(toks) else toks
                want |= set(take)
                left -= len(take)
                if left == 0:
                    break
            got = set(torch.nonzero(m[h, ri]).flatten().tolist())
            assert got == want, (t, h, sorted(got ^ want)[:10])


@case("select: bit agreement equals 32 - popcount(xor); pack_bits order", True)
def _():
    import torch
    from hashattn_eval import select as sel
    g = torch.Generator().manual_seed(2)
    qb = torch.randint(0, 2, (3, 5, 32), generator=g).bool()
    kb = torch.randint(0, 2, (3, 7, 32), generator=g).bool()
    a = sel.agreement(sel.bits_pm1(qb), sel.bits_pm1(kb))
    qi, ki = sel.pack_bits(qb).tolist(), sel.pack_bits(kb).tolist()
    for h in range(3):
        for i in range(5):
            for j in range(7):
                assert a[h, i, j] == 32 - bin(qi[h][i] ^ ki[h][j]).count("1")
    one = torch.zeros(32, dtype=torch.bool)
    one[3] = True
    assert int(sel.pack_bits(one)) == 8


@case("select: hash MLP bits match a float64 evaluation away from zero", True)
def _():
    import torch
    from hashattn_eval import select as sel
    g = torch.Generator().manual_seed(4)
    H, N, D, m = 2, 50, 16, 24
    w = {"w1": torch.randn(H, m, D, generator=g) / 4, "b1": torch.randn(H, m, generator=g) / 4,
         "w2": torch.randn(H, m, m, generator=g) / 5, "b2": torch.randn(H, m, generator=g) / 4,
         "w3": torch.randn(H, 32, m, generator=g) / 5, "b3": torch.randn(H, 32, generator=g) / 4}
    x = torch.randn(H, N, D, generator=g)
    bits = sel.hash_mlp_bits(x, w)
    for h in range(H):
        for i in range(N):
            v = x[h, i].double()
            z = v
            for layer, act in ((1, True), (2, True), (3, False)):
                z = w[f"w{layer}"][h].double() @ z + w[f"b{layer}"][h].double()
                if act:
                    z = z / (1 + torch.exp(-z))
            for o in range(32):
                if abs(float(z[o])) > 1e-4:
                    assert bool(bits[h, i, o]) == (float(z[o]) > 0)


@case("evaluate: oracle_layers gives hash methods the oracle's mask in those layers only", True)
def _():
    import torch
    from hashattn_eval import evaluate as ev
    from hashattn_eval import select as sel
    g = torch.Generator().manual_seed(6)
    L, hq, hkv, D, m, S = 2, 4, 2, 16, 8, 300
    w = lambda *shape: torch.randn(*shape, generator=g) / 4  # noqa: E731
    side = lambda H: {"w1": w(L, H, m, D), "b1": w(L, H, m), "w2": w(L, H, m, m), "b2": w(L, H, m),  # noqa: E731
                      "w3": w(L, H, 32, m), "b3": w(L, H, 32)}
    method = ev.Method("hash-paper-group", {"query": side(hq), "key": side(hq)}, False, True)
    q, k = torch.randn(hq, 5, D, generator=g), torch.randn(hkv, S, D, generator=g)
    pos = torch.arange(S - 5, S)
    logits = torch.matmul(q, k.repeat_interleave(hq // hkv, 0).transpose(1, 2))
    b = sel.Budget(8, 8, 1 / 16)
    ev.STATE.begin(method, b, 5, "cpu", 0)
    try:
        oracle = sel.oracle_mask(logits, pos, b)
        ev.STATE.oracle_layers = frozenset({1})
        for layer in range(L):
            got = ev._mask_for(layer, hq // hkv, q, k, pos, logits, {})
            ev.STATE.oracle_layers = frozenset()
            own = ev._mask_for(layer, hq // hkv, q, k, pos, logits, {})
            ev.STATE.oracle_layers = frozenset({1})
            assert torch.equal(got, oracle if layer == 1 else own), layer
        assert not torch.equal(own, oracle)  # the test can tell the two apart
    finally:
        ev.STATE.oracle_layers = frozenset()


@case("evaluate: each hash method's weight file (per-head file beside the shipped paper file only)", True)
def _():
    from hashattn_eval import evaluate as ev
    shipped, head, compact = ev.SHIPPED["paper"], ev.SHIPPED["paper-head"], ev.SHIPPED["compact"]
    assert ev.weights_for("hash-paper-group") == shipped
    assert ev.weights_for("hash-compact-head") == compact == ev.weights_for("hash-compact-group")
    # the shipped per-head file when it exists, else the paper file
    assert ev.weights_for("hash-paper-head") == (head if os.path.exists(head) else shipped)
    # a pair under test: one file per layout, unless a per-head file is named
    assert ev.weights_for("hash-paper-head", "/t/p.safetensors") == "/t/p.safetensors"
    assert ev.weights_for("hash-paper-group", "/t/p.safetensors", "/t/h.safetensors") == "/t/p.safetensors"
    assert ev.weights_for("hash-paper-head", "/t/p.safetensors", "/t/h.safetensors") == "/t/h.safetensors"
    assert ev.weights_for("hash-compact-group", "/t/p.safetensors", None, "/t/c.safetensors") == "/t/c.safetensors"


print(f"eval: {RESULTS['passed']} passed, {RESULTS['failed']} failed, "
      f"{RESULTS['skipped']} skipped")
print("eval: " + ("FAILED" if RESULTS["failed"] else "OK"))
sys.exit(1 if RESULTS["failed"] else 0)
