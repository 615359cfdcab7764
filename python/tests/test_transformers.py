"""The transformers integration (hashattn.transformers_backend) on tiny random Llama models.

CPU, float32: with budgets that cover every token, greedy generation through the plugin
gives the same tokens as transformers' eager attention and logits within 1e-4 (batches
with left padding, chunked prefill, every selection mode, signature layout, KV layout
and awkward block sizes); with small budgets each decode attends exactly sink + recent +
heavy tokens (counts read back through the adapter); the signatures in the paged cache
are the hashes of the post-RoPE keys; weights from a file equal the same weights bound
from memory; bad options and unsupported uses raise errors that say what to do.

bfloat16: the same comparisons on the CPU backend and, when torch sees a GPU and the
library has its CUDA backend, on CUDA, with tolerances for bf16 rounding (a greedy
difference must be a near-tie of the eager model's logits).

Skipped when torch or transformers is missing. Every model prints its seed.
"""
from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hashattn  # noqa: E402

hf = pytest.importorskip("hashattn.transformers_backend")

from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb  # noqa: E402

VOCAB = 256
FULL = dict(sink_tokens=0, recent_tokens=1, heavy_fraction=1.0)  # K = n: every token


def tiny_config(**over):
    kw = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=64,
              max_position_embeddings=512, initializer_range=0.1, pad_token_id=0,
              bos_token_id=1, eos_token_id=None, tie_word_embeddings=False)
    kw.update(over)
    return LlamaConfig(**kw)


def tiny_model(seed=0, dtype=torch.float32, device="cpu", **over):
    """A random tiny Llama (2 layers, 4 q heads / 2 kv heads, head_dim 64)."""
    print(f"MODEL seed={seed} dtype={dtype} device={device} {over}")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**over)).eval()
    model.set_attn_implementation("eager")
    return model.to(device=device, dtype=dtype)


def prompts(seed, batch, length, pads=()):
    """Random token ids [batch, length] and a mask with ``pads[b]`` left pads."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for b, p in enumerate(pads):
        ids[b, :p] = 0
        mask[b, :p] = 0
    return ids, mask


def greedy(model, ids, mask, new_tokens=20, cache=None):
    kw = hf.cache_kwargs(model, cache) if cache is not None else {}
    out = model.generate(ids.to(model.device), attention_mask=mask.to(model.device),
                         max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, **kw)
    return out.sequences[:, ids.shape[1]:].cpu(), [x.float().cpu() for x in out.logits]


def use(model, impl):
    model.set_attn_implementation(impl)
    return model


def run_eager_and_hashattn(model, ids, mask, new_tokens=20, **cache_opts):
    ref = greedy(use(model, "eager"), ids, mask, new_tokens)
    cache = hf.HashAttnCache(use(model, "hashattn"), weights="random", **cache_opts)
    got = greedy(model, ids, mask, new_tokens, cache)
    return ref, got, cache


# ---- registration and versions -----------------------------------------------------------


def test_registered():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    assert AttentionInterface._global_mapping["hashattn"] is hf.attention_forward
    assert ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["hashattn"] is hf.mask_function
    model = LlamaForCausalLM._from_config(tiny_config(), attn_implementation="hashattn")
    assert model.config._attn_implementation == "hashattn"


@pytest.mark.parametrize("version,ok", [("5.0.0", True), ("5.17.0", True), ("5.24.0", True),
                                        ("5.30.0.dev0", True), ("4.57.6", False),
                                        ("6.0.0", False), ("6.0.0rc1", False)])
def test_version_check(version, ok):
    if ok:
        hf.check_transformers_version(version)
    else:
        with pytest.raises(ImportError, match=r"supports transformers >=5.0,<6 \(tested: "):
            hf.check_transformers_version(version)


def test_installed_version_supported():
    hf.check_transformers_version()
    assert hf._version_tuple(transformers.__version__)[0] == 5


# ---- (a) full budget == eager ------------------------------------------------------------

FULL_CASES = [
    # (seed, batch, prompt length, left pads, cache options)
    (10, 1, 37, (), {}),
    (11, 1, 37, (), {"dense": True}),
    (12, 3, 30, (7, 0, 2), {"block_size": 5}),
    (13, 2, 24, (0, 11), {"selection": "per_head", "kv_layout": "HND"}),
    (14, 1, 50, (), {"signature_layout": "per_kv_head", "block_size": 1}),
    (15, 2, 17, (3, 0), {"selection": "per_head", "signature_layout": "per_kv_head",
                         "block_size": 7, "mlp_width": 64}),
    (16, 1, 1, (), {"block_size": 16, "initial_blocks": 1}),
]


@pytest.mark.parametrize("case", FULL_CASES, ids=lambda c: (
    f"full(seed={c[0]},batch={c[1]},prompt={c[2]},pads={list(c[3])},"
    + ",".join(f"{k}={v}" for k, v in c[4].items()) + ")"))
def test_full_budget_equals_eager(case):
    seed, batch, length, pads, opts = case
    model = tiny_model(seed)
    ids, mask = prompts(seed, batch, length, pads)
    (ref_tok, ref_logits), (tok, logits), cache = run_eager_and_hashattn(
        model, ids, mask, **FULL, **opts)
    assert torch.equal(tok, ref_tok), hf.compare_greedy(ref_tok, ref_logits, tok)[1]
    rows = mask.bool()[:, -1]  # every row's last prompt token is real
    diff = max(float((a[rows] - b[rows]).abs().max()) for a, b in zip(ref_logits, logits))
    print(f"max |logits - eager| = {diff:.3g}")
    assert diff < 1e-4
    assert cache.cached_tokens() == [length - p + 19 for p in (list(pads) + [0] * batch)[:batch]]


def test_chunked_prefill_equals_eager():
    model = tiny_model(20)
    ids, _ = prompts(20, 2, 41)
    with torch.no_grad():
        ref = use(model, "eager")(ids).logits
        cache = hf.HashAttnCache(use(model, "hashattn"), weights="random", block_size=4, **FULL)
        kw = hf.cache_kwargs(model, cache)
        parts = [model(ids[:, a:b], **kw).logits for a, b in ((0, 25), (25, 26), (26, 41))]
    got = torch.cat(parts, dim=1)
    assert float((got - ref).abs().max()) < 1e-4
    assert cache.get_seq_length() == 41 and cache.cached_tokens() == [41, 41]


def test_reset_reuses_the_cache():
    model = tiny_model(21)
    ids, mask = prompts(21, 2, 12)
    cache = hf.HashAttnCache(use(model, "hashattn"), weights="random", sink_tokens=2,
                             recent_tokens=2, heavy_count=3)
    first = greedy(model, ids, mask, 10, cache)[0]
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.cached_tokens() == []
    assert torch.equal(greedy(model, ids, mask, 10, cache)[0], first)


# ---- (b) small budgets attend fewer tokens -----------------------------------------------


@pytest.mark.parametrize("selection,layout,budget", [
    ("group", "per_query_head", dict(sink_tokens=4, recent_tokens=8, heavy_fraction=1 / 8)),
    ("per_head", "per_kv_head", dict(sink_tokens=2, recent_tokens=3, heavy_count=5)),
    ("group", "per_kv_head", dict(sink_tokens=0, recent_tokens=1, heavy_fraction=1 / 16)),
], ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(f"{k}={v[k]:g}" for k in v))
def test_small_budget_attends_fewer(selection, layout, budget):
    model = use(tiny_model(30), "hashattn")
    ids, _ = prompts(30, 2, 50)
    cache = hf.HashAttnCache(model, weights="random", seed=30, selection=selection,
                             signature_layout=layout, block_size=8, record_selection=True,
                             **budget)
    hsel = 2 if selection == "group" else 4
    kw = hf.cache_kwargs(model, cache)
    sink, recent = budget["sink_tokens"], budget["recent_tokens"]
    with torch.no_grad():
        logits = model(ids, **kw).logits[:, -1]
        for step in range(20):
            nxt = logits.argmax(-1, keepdim=True)
            logits = model(nxt, **kw).logits[:, -1]
            n = 51 + step
            heavy = budget.get("heavy_count", -1)
            if heavy < 0:
                heavy = math.floor(budget["heavy_fraction"] * n)
            want = n if n <= sink + recent + heavy else sink + recent + heavy
            for layer in range(2):
                counts = cache.last_selected_counts(layer)
                assert counts.shape == (2, hsel)
                assert torch.all(counts == want), (step, layer, counts, want)
    stats = cache.selection_stats()
    assert stats["decode_calls"] == 2 * 20
    assert stats["available"] == hsel * 2 * 2 * sum(51 + s for s in range(20))
    assert stats["fraction"] < 0.5, stats
    # and the attention really is sparse: the logits move away from the full budget's
    dense = hf.HashAttnCache(model, weights="random", seed=30, selection=selection,
                             signature_layout=layout, block_size=8, **FULL)
    with torch.no_grad():
        full = model(ids, **hf.cache_kwargs(model, dense)).logits[:, -1]
        nxt = full.argmax(-1, keepdim=True)
        sparse_cache = hf.HashAttnCache(model, weights="random", seed=30, selection=selection,
                                        signature_layout=layout, block_size=8, **budget)
        kw2 = hf.cache_kwargs(model, sparse_cache)
        model(ids, **kw2)
        a = model(nxt, **hf.cache_kwargs(model, dense)).logits
        b = model(nxt, **kw2).logits
    assert float((a - b).abs().max()) > 1e-4


def test_small_budget_generates_with_padding():
    model = tiny_model(31)
    ids, mask = prompts(31, 3, 40, (0, 9, 25))
    cache = hf.HashAttnCache(use(model, "hashattn"), weights="random", sink_tokens=2,
                             recent_tokens=4, heavy_fraction=1 / 8, record_selection=True)
    tok, logits = greedy(model, ids, mask, 20, cache)
    assert tok.shape == (3, 20) and all(torch.isfinite(x).all() for x in logits)
    assert cache.cached_tokens() == [59, 50, 34]
    # the last decode attended to 2 + 4 + floor(n/8) tokens, n = tokens of the sequence
    counts = cache.last_selected_counts(1)
    for b, n in enumerate([59, 50, 34]):
        assert torch.all(counts[b] == 6 + n // 8)
    assert cache.selection_stats()["fraction"] < 0.5


# ---- what the plugin sees -------------------------------------------------------------------


def test_signatures_are_of_post_rope_keys():
    model = use(tiny_model(40), "hashattn")
    ids, _ = prompts(40, 1, 29)
    cache = hf.HashAttnCache(model, weights="random", seed=40, block_size=8)
    with torch.no_grad():
        model(ids, **hf.cache_kwargs(model, cache))
        inner = model.model
        h = inner.layers[0].input_layernorm(inner.embed_tokens(ids))
        k = inner.layers[0].self_attn.k_proj(h).view(1, 29, 2, 64).transpose(1, 2)
        cos, sin = inner.rotary_emb(h, torch.arange(29)[None])
        _, k_rot = apply_rotary_pos_emb(k, k, cos, sin)
    ctx = cache.context
    keys = k_rot[0].transpose(0, 1).contiguous()            # [T, Hkv, D]
    want = ctx.hash(0, keys, "key").view(torch.int32)        # [T, Hsig]
    unrotated = ctx.hash(0, k[0].transpose(0, 1).contiguous(), "key").view(torch.int32)
    kc, vc, sc = cache.paged_caches(0)
    slots = torch.from_numpy(cache.slots(0))
    blocks, offs = slots // 8, slots % 8
    got = sc.view(torch.int32)[blocks, :, offs]               # [T, Hsig]
    assert torch.equal(got, want)
    assert not torch.equal(got[1:], unrotated[1:])           # RoPE moved them
    assert torch.allclose(kc[blocks, offs], keys, atol=1e-6)  # NHD rows are the rotated keys


def test_weight_file_equals_bound_weights(tmp_path):
    model = use(tiny_model(50), "hashattn")
    ids, mask = prompts(50, 2, 40, (0, 5))
    budget = dict(sink_tokens=2, recent_tokens=4, heavy_fraction=1 / 8)
    for layout, hsig in (("per_query_head", 4), ("per_kv_head", 2)):
        wq, wk = hashattn.random_weights(2, 4, hsig, 64, 32, seed=7)
        path = tmp_path / f"{layout}.safetensors"
        hashattn.write_weights(path, wq, wk, num_kv_heads=2, signature_layout=layout)
        from_file = hf.HashAttnCache(model, weights=path, **budget)
        assert from_file.context.signature_layout.name.lower() == layout
        assert from_file.context.mlp_width == 32
        random = hf.HashAttnCache(model, weights="random", seed=7, mlp_width=32,
                                  signature_layout=layout, **budget)
        pair = hf.HashAttnCache(model, weights=(wq, wk), signature_layout=layout, **budget)
        a, b, c = (greedy(model, ids, mask, 12, x) for x in (from_file, random, pair))
        assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])
        assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def test_weight_file_must_match_the_model(tmp_path):
    model = use(tiny_model(51), "hashattn")
    wq, wk = hashattn.random_weights(3, 4, 4, 64, 32, seed=1)
    path = tmp_path / "w3.safetensors"
    hashattn.write_weights(path, wq, wk, num_kv_heads=2)
    with pytest.raises(ValueError, match=r"num_layers = 3 in the file, but the model has "
                                         r"num_layers = 2"):
        hf.HashAttnCache(model, weights=path)
    wq, wk = hashattn.random_weights(2, 4, 2, 64, 32, seed=1)
    path = tmp_path / "kv.safetensors"
    hashattn.write_weights(path, wq, wk, num_kv_heads=2, signature_layout="per_kv_head")
    with pytest.raises(ValueError, match="signature_layout = 'per_query_head', but the weight"):
        hf.HashAttnCache(model, weights=path, signature_layout="per_query_head")
    with pytest.raises(ValueError, match="mlp_width = 64, but the weight file"):
        hf.HashAttnCache(model, weights=path, mlp_width=64)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 4)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        hf.HashAttnCache(model, weights=bad)


# ---- (c) bad options and unsupported uses ------------------------------------------------

BAD_OPTIONS = [
    (dict(weights="random", heavy_fraction=2.0), hashattn.InvalidArgumentError,
     r"budget.heavy_fraction = 2 must be in \[0, 1\]"),
    (dict(weights="random", recent_tokens=0), hashattn.InvalidArgumentError,
     r"budget.recent_tokens = 0 must be >= 1"),
    (dict(weights="random", sink_tokens=-1), hashattn.InvalidArgumentError, r"sink_tokens"),
    (dict(weights="random", heavy_count=-2), hashattn.InvalidArgumentError, r"heavy_count"),
    (dict(weights="random", selection="topk"), ValueError,
     r"selection = 'topk'; expected one of per_head, group"),
    (dict(weights="random", signature_layout="per_token"), ValueError,
     r"signature_layout = 'per_token'; expected one of per_query_head, per_kv_head"),
    (dict(weights="random", kv_layout="NDH"), ValueError, r"kv_layout = 'NDH'"),
    (dict(weights="random", block_size=0), hashattn.InvalidArgumentError, r"block_size = 0"),
    (dict(weights="random", mlp_width=0), hashattn.InvalidArgumentError, r"mlp_width = 0"),
    (dict(), ValueError, r"weights: give a hashattn weight file path"),
    (dict(weights=3), TypeError, r"weights: expected a path, 'random' or a \(query, key\) pair"),
    (dict(weights="/no/such/file.safetensors"), FileNotFoundError, r"no such file"),
    (dict(weights="random", dtype=torch.float64), ValueError, r"dtype = torch.float64"),
    (dict(weights="random", device="cuda"), ValueError, r"float32 runs on the CPU backend only"),
    (dict(weights="random", device="meta"), ValueError, r"device = meta"),
]


@pytest.mark.parametrize("opts,exc,match", BAD_OPTIONS,
                         ids=lambda v: str(v) if isinstance(v, dict) else None)
def test_bad_options(opts, exc, match):
    model = use(tiny_model(60), "hashattn")
    with pytest.raises(exc, match=match):
        hf.HashAttnCache(model, **opts)


@pytest.mark.parametrize("over,match", [
    (dict(head_dim=36, hidden_size=144), r"head_dim = 36 must be a multiple of 8"),
    (dict(num_attention_heads=4, num_key_value_heads=3), r"not a multiple of"),
])
def test_unsupported_shapes(over, match):
    with pytest.raises((ValueError, hashattn.InvalidArgumentError), match=match):
        cfg = tiny_config(**over)
        cfg._attn_implementation = "hashattn"
        hf.HashAttnCache(cfg, weights="random")


def test_unsupported_configs():
    cfg = tiny_config()
    cfg.sliding_window = 16
    with pytest.raises(ValueError, match="sliding-window attention is not supported"):
        hf.HashAttnCache(cfg, weights="random")
    cfg = tiny_config()
    cfg.layer_types = ["full_attention", "sliding_attention"]
    with pytest.raises(ValueError, match="only full_attention"):
        hf.HashAttnCache(cfg, weights="random")
    cfg = tiny_config()
    cfg.attn_logit_softcapping = 50.0
    with pytest.raises(ValueError, match="soft-capping"):
        hf.HashAttnCache(cfg, weights="random")


def test_wrong_attention_implementation():
    model = tiny_model(61)
    with pytest.raises(ValueError, match=r"runs attn_implementation = 'eager'; load it with "
                                         r"attn_implementation='hashattn'"):
        hf.HashAttnCache(model, weights="random")
    cache = hf.HashAttnCache(use(model, "hashattn"), weights="random")
    ids, _ = prompts(61, 1, 5)
    use(model, "sdpa")
    with pytest.raises(RuntimeError, match="the model runs attn_implementation = 'sdpa'"):
        model(ids, **hf.cache_kwargs(model, cache))


@pytest.mark.parametrize("how", ["no cache", "use_cache=False", "DynamicCache"])
def test_hashattn_needs_its_cache(how):
    model = use(tiny_model(62), "hashattn")
    ids, _ = prompts(62, 1, 6)
    kw = {"no cache": {}, "use_cache=False": {"use_cache": False},
          "DynamicCache": hf.cache_kwargs(model, DynamicCache(config=model.config))}[how]
    with pytest.raises(RuntimeError, match="needs a hashattn.transformers_backend.HashAttnCache"):
        with torch.no_grad():
            model(ids, **kw)
    with pytest.raises(RuntimeError, match="needs a hashattn.transformers_backend.HashAttnCache"):
        model.generate(ids, max_new_tokens=2, do_sample=False, use_cache=how != "use_cache=False")


def test_unsupported_generation_modes():
    model = use(tiny_model(63), "hashattn")
    ids, _ = prompts(63, 1, 6)
    cache = hf.HashAttnCache(model, weights="random")
    with pytest.raises(NotImplementedError, match="does not support beam search"):
        model.generate(ids, max_new_tokens=3, num_beams=2, do_sample=False,
                       **hf.cache_kwargs(model, cache))
    for call, what in ((lambda c: c.crop(3), "crop"), (lambda c: c.batch_select_indices(None),
                                                     "batch_select_indices"),
                       (lambda c: c.batch_repeat_interleave(2), "batch_repeat_interleave")):
        with pytest.raises(NotImplementedError, match=what):
            call(hf.HashAttnCache(model, weights="random"))


def test_bad_runtime_inputs_break_the_cache_clearly():
    model = use(tiny_model(64), "hashattn")
    ids, _ = prompts(64, 2, 6)
    cache = hf.HashAttnCache(model, weights="random")
    kw = hf.cache_kwargs(model, cache)
    with torch.no_grad():
        model(ids, **kw)
        with pytest.raises(ValueError, match="the cache holds 2 sequences but this forward has "
                                             "batch size 1"):
            model(ids[:1, :1], **kw)
        fresh = hf.HashAttnCache(model, weights="random")
        with pytest.raises(ValueError, match="custom 4D masks are not supported"):
            model(ids, attention_mask=torch.zeros(2, 1, 6, 6), **hf.cache_kwargs(model, fresh))
        with pytest.raises(RuntimeError, match="unusable after an earlier error"):
            model(ids, **hf.cache_kwargs(model, fresh))
        fresh.reset()
        model(ids, **hf.cache_kwargs(model, fresh))
        other = hf.HashAttnCache(model, weights="random")
        model.to(torch.bfloat16)
        with pytest.raises(ValueError, match="query is torch.bfloat16 on cpu, the cache was made "
                                             "for torch.float32"):
            model(ids, **hf.cache_kwargs(model, other))


def test_selection_counts_need_recording():
    model = use(tiny_model(65), "hashattn")
    cache = hf.HashAttnCache(model, weights="random")
    with pytest.raises(ValueError, match="record_selection=True"):
        cache.selection_stats()
    with pytest.raises(ValueError, match="record_selection=True"):
        cache.last_selected_counts(0)


# ---- bfloat16: the CPU backend always, CUDA when present ------------------------------------


def _bf16_devices():
    devs = [pytest.param("cpu", id="cpu")]
    cuda_ok = torch.cuda.is_available() and hashattn.has_cuda()
    devs.append(pytest.param("cuda", id="cuda", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not cuda_ok, reason="needs a CUDA device and a CUDA build")]))
    return devs


# bf16 logits of the tiny model are O(1): a few bf16 ulps of difference are expected
BF16_TIE = 0.125


@pytest.mark.parametrize("device", _bf16_devices())
@pytest.mark.parametrize("case", [(70, 1, 45, (), {}),
                                  (71, 3, 33, (0, 6, 13), {"selection": "per_head"}),
                                  (72, 2, 64, (5, 0), {"signature_layout": "per_kv_head",
                                                       "kv_layout": "HND"})],
                         ids=lambda c: f"seed={c[0]},batch={c[1]},prompt={c[2]}")
def test_bf16_full_budget_matches_eager(device, case):
    seed, batch, length, pads, opts = case
    model = tiny_model(seed, torch.bfloat16, device)
    ids, mask = prompts(seed, batch, length, pads)
    (ref_tok, ref_logits), (tok, logits), cache = run_eager_and_hashattn(
        model, ids, mask, **FULL, **opts)
    ok, why = hf.compare_greedy(ref_tok, ref_logits, tok, BF16_TIE)
    print(why)
    assert ok, why
    rows = mask.bool()[:, -1]
    first = float((ref_logits[0][rows] - logits[0][rows]).abs().max())
    scale = float(ref_logits[0].abs().max())
    print(f"prefill logits: max diff {first:.3g}, max |logit| {scale:.3g}")
    assert first <= 0.05 * scale


@pytest.mark.parametrize("device", _bf16_devices())
def test_bf16_small_budget_counts(device):
    model = use(tiny_model(73, torch.bfloat16, device), "hashattn")
    ids, mask = prompts(73, 2, 90, (0, 30))
    cache = hf.HashAttnCache(model, weights="random", sink_tokens=8, recent_tokens=8,
                             heavy_fraction=1 / 16, record_selection=True)
    tok, logits = greedy(model, ids, mask, 16, cache)
    assert all(torch.isfinite(x).all() for x in logits)
    assert cache.cached_tokens() == [105, 75]
    counts = cache.last_selected_counts(0).cpu()
    assert torch.all(counts[0] == 16 + 105 // 16) and torch.all(counts[1] == 16 + 75 // 16)
    assert cache.selection_stats()["fraction"] < 0.5


@pytest.mark.parametrize("device", _bf16_devices())
def test_bf16_signatures_are_of_post_rope_keys(device):
    model = use(tiny_model(74, torch.bfloat16, device), "hashattn")
    ids, _ = prompts(74, 1, 21)
    ids = ids.to(device)
    cache = hf.HashAttnCache(model, weights="random", seed=74, block_size=4)
    with torch.no_grad():
        model(ids, **hf.cache_kwargs(model, cache))
        inner = model.model
        h = inner.layers[0].input_layernorm(inner.embed_tokens(ids))
        k = inner.layers[0].self_attn.k_proj(h).view(1, 21, 2, 64).transpose(1, 2)
        cos, sin = inner.rotary_emb(h, torch.arange(21, device=device)[None])
        _, k_rot = apply_rotary_pos_emb(k, k, cos, sin)
    keys = k_rot[0].transpose(0, 1).contiguous()
    want = cache.context.hash(0, keys, "key").view(torch.int32)
    kc, vc, sc = cache.paged_caches(0)
    slots = torch.from_numpy(cache.slots(0)).to(device)
    got = sc.view(torch.int32)[slots // 4, :, slots % 4]
    assert torch.equal(got, want)
    assert torch.equal(kc[slots // 4, slots % 4], keys)


def test_compare_greedy():
    ref = torch.tensor([[1, 2, 3], [4, 5, 6]])
    logits = [torch.zeros(2, 8) for _ in range(3)]
    logits[1][1, 5], logits[1][1, 7] = 1.0, 0.9
    assert hf.compare_greedy(ref, logits, ref.clone()) == (True, "all tokens equal")
    got = torch.tensor([[1, 2, 3], [4, 7, 0]])
    ok, why = hf.compare_greedy(ref, logits, got, 0.05)
    assert not ok and "seq 1: first difference at new token 1 (5 vs 7), logit gap 0.1" in why
    assert hf.compare_greedy(ref, logits, got, 0.2)[0]


def test_cache_interface():
    model = use(tiny_model(80), "hashattn")
    cache = hf.HashAttnCache(model, weights="random", block_size=4)
    assert len(cache) == 2 and cache.get_seq_length() == 0 and not cache.is_compileable
    assert cache.paged_caches(0) == (None, None, None)
    ids, _ = prompts(80, 2, 9)
    with torch.no_grad():
        model(ids, **hf.cache_kwargs(model, cache))
    assert cache.get_seq_length() == 9 and cache.get_seq_length(1) == 9
    assert cache.get_mask_sizes(1, 0) == (10, 0)
    table = cache.block_table()
    assert table.shape == (2, 3) and len(set(table.ravel().tolist())) == 6
    kc, vc, sc = cache.paged_caches(1)
    assert kc.shape[1:] == (4, 2, 64) and sc.dtype == torch.uint32 and sc.shape[1:] == (4, 4)
    assert "HashAttnCache(layers=2, batch=2, tokens=9" in repr(cache)
    assert cache.budget == hashattn.Budget()
    assert isinstance(copy.copy(cache.budget), hashattn.Budget)
