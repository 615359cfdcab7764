#!/usr/bin/env python3
"""hf-e2e - SmolLM2 in transformers with HashAttention through the Python adapter, end to end.

Loads SmolLM2-135M-Instruct from its GGUF file with transformers' GGUF support (the
`gguf` package must be importable: put its wheel's folder on PYTHONPATH), then:

  1. dense reference: greedy generation with transformers' own attention (sdpa);
  2. full budget (every token attended) through libhashattn, prompt by prompt and as one
     left-padded batch: the tokens must equal the dense ones, where a difference is
     accepted only at a near-tie of the dense logits (--tie-tolerance; bf16 rounds),
     and the prompt's next-token logits must agree (--logit-tolerance);
  3. 16x (heavy budget n/16 plus sink and recent windows): every prompt and the batch
     generate with finite logits, each decode attends exactly sink + recent + n/16
     tokens once n is past the windows, and the outputs are printed beside the dense ones.

The hash weights come from --weights (a hashattn safetensors file for this model, e.g.
from the trainer); without it seeded random weights are used, which checks the
mechanics only (the 16x outputs then show what random selection does).

    PYTHONPATH=python:/path/to/gguf-wheel-dir python3 scripts/hf-e2e.py \\
        --gguf ~/.cache/hashattn/SmolLM2-135M-Instruct.Q4_1.gguf --weights hash.safetensors

Defaults: CUDA and bfloat16 when torch sees a GPU, else the CPU and float32 (slow but
complete). The library is found as the adapter documents (HASHATTN_LIBRARY, ...); a CUDA
run needs a library built with -DHASHATTN_WITH_CUDA=ON. transformers' from_pretrained
with gguf_file needs `accelerate`; without it the script builds the model from the
GGUF config and loads transformers' own GGUF conversion of the tensors
(modeling_gguf_pytorch_utils.load_gguf_checkpoint), the same weights either way.

Ends with one line "N passed, N failed"; the exit status is 0 only when none failed.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import os
import sys
import time
from typing import Any, Callable, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

import torch  # noqa: E402
import transformers  # noqa: E402

import hashattn  # noqa: E402
import hashattn.transformers_backend as hf  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in two sentences why the sky is blue.",
    "List three uses of a paperclip.",
]

# Fallback long-context text: docstrings of the standard library, the same on every
# machine with the same Python (pass --text for real prose, e.g. a novel).
DOC_MODULES = ["argparse", "collections", "json", "logging", "re", "subprocess", "typing",
               "unittest", "email", "http.client", "datetime", "pathlib", "itertools",
               "functools", "inspect", "textwrap", "string", "shutil", "tarfile", "zipfile"]


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ---- loading ----------------------------------------------------------------------------------


def load_model(path: str, dtype: torch.dtype, device: str) -> Tuple[Any, Any]:
    """(model, tokenizer) from a GGUF file through transformers' GGUF support."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    if importlib.util.find_spec("gguf") is None:
        raise SystemExit("hf-e2e: the gguf package is not importable; put the folder of its "
                         "wheel on PYTHONPATH")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if importlib.util.find_spec("accelerate") is not None:
        log("loading with from_pretrained(gguf_file=...)")
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                     dtype=torch.float32)
    else:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        log("loading without accelerate: config from the GGUF, tensors through "
            "load_gguf_checkpoint")
        cfg = AutoConfig.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
        res = model.load_state_dict(tensors, strict=False)
        tied = {"lm_head.weight"} if getattr(cfg, "tie_word_embeddings", False) else set()
        missing = set(res.missing_keys) - tied
        if missing or res.unexpected_keys:
            raise SystemExit(f"hf-e2e: GGUF tensors do not fit the model: missing "
                             f"{sorted(missing)}, unexpected {sorted(res.unexpected_keys)}")
        model.tie_weights()
    model = model.to(device=device, dtype=dtype).eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def chat(tok: Any, text: str, raw: bool) -> str:
    if raw or not getattr(tok, "chat_template", None):
        return text
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                   add_generation_prompt=True)


def long_prompt(tok: Any, text_file: Optional[str], tokens: int) -> str:
    if text_file:
        with open(text_file, encoding="utf-8", errors="replace") as f:
            text = f.read()
    else:
        parts = []
        for mod in DOC_MODULES:
            try:
                parts.append(inspect.getdoc(importlib.import_module(mod)) or "")
            except ImportError:
                continue
        text = "\n\n".join(parts)
    ids = tok(text, add_special_tokens=False)["input_ids"][:tokens]
    return tok.decode(ids) + "\n\nTo summarise the text above in one sentence:"


# ---- generation ---------------------------------------------------------------------------------


class Run:
    """Greedy generation of one batch: new tokens [B, n], per-step logits, seconds."""

    def __init__(self, tokens: torch.Tensor, logits: List[torch.Tensor], seconds: float,
                 cache: Optional[hf.HashAttnCache]) -> None:
        self.tokens, self.logits, self.seconds, self.cache = tokens, logits, seconds, cache


def generate(model: Any, tok: Any, texts: List[str], new_tokens: int,
             cache: Optional[hf.HashAttnCache] = None) -> Run:
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ids = enc["input_ids"].to(model.device)
    mask = enc["attention_mask"].to(model.device)
    kw = hf.cache_kwargs(model, cache) if cache is not None else {}
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tok.pad_token_id, **kw)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t
    return Run(out.sequences[:, ids.shape[1]:].cpu(), [x.float().cpu() for x in out.logits],
               secs, cache)


def make_cache(model: Any, args: argparse.Namespace, **budget: Any) -> hf.HashAttnCache:
    weights = args.weights or "random"
    return hf.HashAttnCache(model, weights=weights, seed=args.seed, selection=args.selection,
                            block_size=args.block_size, record_selection=True, **budget)


def full_budget() -> dict:
    return dict(sink_tokens=0, recent_tokens=1, heavy_fraction=1.0)


def sparse_budget(args: argparse.Namespace) -> dict:
    return dict(sink_tokens=args.sink, recent_tokens=args.recent,
                heavy_fraction=1.0 / args.sparsity)


# ---- the checks ---------------------------------------------------------------------------------


class Tally:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, fn: Callable[[], Tuple[bool, str]]) -> None:
        try:
            ok, msg = fn()
        except Exception as e:  # a crash is a failed check, the others still run
            ok, msg = False, f"{type(e).__name__}: {e}"
        self.passed += ok
        self.failed += not ok
        log(f"{'PASS' if ok else 'FAIL'} {name}: {msg}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_gguf = os.path.join(os.environ.get("HASHATTN_CACHE",
                                               os.path.expanduser("~/.cache/hashattn")),
                                "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--gguf", default=default_gguf, help="the model file (default: %(default)s)")
    ap.add_argument("--weights", help="hashattn hash weight file (safetensors) for this model; "
                    "default: seeded random weights")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                    help="default: bfloat16 on CUDA, float32 on the CPU")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--sparsity", type=float, default=16.0,
                    help="heavy budget = n / SPARSITY (default %(default)s)")
    ap.add_argument("--sink", type=int, default=16, help="sink tokens at 16x (paper: 128)")
    ap.add_argument("--recent", type=int, default=16, help="recent tokens at 16x (paper: 128)")
    ap.add_argument("--selection", default="group", choices=["group", "per_head"])
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--text", help="text file for the long prompt (default: stdlib docstrings)")
    ap.add_argument("--long-tokens", type=int, default=1500,
                    help="tokens of the long prompt (default %(default)s)")
    ap.add_argument("--tie-tolerance", type=float,
                    help="largest dense-logit gap accepted at a greedy difference "
                         "(default: 0.25 in bf16/fp16, 1e-3 in fp32)")
    ap.add_argument("--logit-tolerance", type=float,
                    help="largest difference of the prompt's next-token logits between dense "
                         "and full budget (default: 1.5 in bf16/fp16, 1e-2 in fp32)")
    ap.add_argument("--raw", action="store_true", help="no chat template around the prompts")
    args = ap.parse_args()

    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda")
                                          else "float32"))
    tie = args.tie_tolerance if args.tie_tolerance is not None else (
        1e-3 if dtype == torch.float32 else 0.25)
    logit_tol = args.logit_tolerance if args.logit_tolerance is not None else (
        1e-2 if dtype == torch.float32 else 1.5)
    log(f"hf-e2e: torch {torch.__version__}, transformers {transformers.__version__}, "
        f"libhashattn {hashattn.version()} ({hashattn.library_path()})")
    log(f"device {args.device}, dtype {dtype}, {args.new_tokens} new tokens, tie tolerance "
        f"{tie:g}, weights {args.weights or f'random (seed {args.seed})'}")
    if not args.weights:
        log("note: random hash weights select tokens arbitrarily; the full-budget checks do "
            "not depend on them, the 16x outputs do")
    if not os.path.isfile(args.gguf):
        log(f"hf-e2e: no model file {args.gguf} (scripts/fetch-model fetches it)")
        log("0 passed, 1 failed")
        return 1

    t = time.perf_counter()
    model, tok = load_model(args.gguf, dtype, args.device)
    cfg = model.config
    log(f"loaded {type(model).__name__} in {time.perf_counter() - t:.1f} s: "
        f"{cfg.num_hidden_layers} layers, {cfg.num_attention_heads} q heads, "
        f"{cfg.num_key_value_heads} kv heads, head_dim "
        f"{getattr(cfg, 'head_dim', None) or cfg.hidden_size // cfg.num_attention_heads}")

    texts = [chat(tok, p, args.raw) for p in PROMPTS]
    long_text = long_prompt(tok, args.text, args.long_tokens)
    all_texts = texts + [long_text]
    names = [f"prompt {i}" for i in range(len(PROMPTS))] + ["long prompt"]
    n = args.new_tokens
    tally = Tally()

    # 1. dense reference
    model.set_attn_implementation("sdpa")
    dense = [generate(model, tok, [x], n) for x in all_texts]
    dense_batch = generate(model, tok, texts, n)
    model.set_attn_implementation(hf.ATTN_IMPLEMENTATION)

    # 2. full budget == dense
    def one_full(i: int) -> Tuple[bool, str]:
        run = generate(model, tok, [all_texts[i]], n, make_cache(model, args, **full_budget()))
        stats = run.cache.selection_stats()
        ok, why = same_as_dense(dense[i], run)
        if stats["fraction"] != 1.0:
            ok, why = False, f"attended fraction {stats['fraction']:.4f}, expected 1 ({why})"
        return ok, f"{why} ({run.seconds / n * 1e3:.1f} ms/token, dense " \
                   f"{dense[i].seconds / n * 1e3:.1f})"

    def same_as_dense(ref: Run, run: Run) -> Tuple[bool, str]:
        """Greedy tokens equal up to near-ties, and the first step's logits (the same
        prompt in both runs, whatever came later) close."""
        ok, why = hf.compare_greedy(ref.tokens, ref.logits, run.tokens, tie)
        first = float((ref.logits[0] - run.logits[0]).abs().max())
        scale = float(ref.logits[0].abs().max())
        if first > logit_tol:
            ok = False
        return ok, f"{why}; prompt logits max diff {first:.3g} (tolerance {logit_tol:g}, " \
                   f"max |logit| {scale:.3g})"

    tally.check("weights load and match the model",
                lambda: (True, repr(make_cache(model, args, **full_budget()).context)))
    for i in range(len(all_texts)):
        tally.check(f"full budget == dense, {names[i]}", lambda i=i: one_full(i))

    def batch_full() -> Tuple[bool, str]:
        run = generate(model, tok, texts, n, make_cache(model, args, **full_budget()))
        return same_as_dense(dense_batch, run)

    tally.check(f"full budget == dense, batch of {len(texts)} (left padding)", batch_full)

    # 3. sparse
    sparse: List[Optional[Run]] = [None] * len(all_texts)
    budget = sparse_budget(args)

    def one_sparse(i: int) -> Tuple[bool, str]:
        cache = make_cache(model, args, **budget)
        run = sparse[i] = generate(model, tok, [all_texts[i]], n, cache)
        if not all(torch.isfinite(x).all() for x in run.logits):
            return False, "non-finite logits"
        length = cache.cached_tokens()[0]
        heavy = math.floor(budget["heavy_fraction"] * length)
        want = min(length, args.sink + args.recent + heavy)
        for layer in range(cfg.num_hidden_layers):
            counts = cache.last_selected_counts(layer).cpu()
            if not torch.all(counts == want):
                return False, f"layer {layer} attended {counts.tolist()}, expected {want}"
        if i == len(all_texts) - 1 and want >= length:
            return False, (f"the long prompt ({length} tokens) is within the budget "
                           f"({want}): no sparsity was exercised; lengthen it (--long-tokens)")
        agree = int((run.tokens[0] == dense[i].tokens[0]).cumprod(0).sum())
        frac = cache.selection_stats()["fraction"]
        return True, (f"n = {length}, last step attended {want} tokens, all decode steps "
                      f"{frac:.3f} of the cache; first {agree}/{n} tokens equal dense "
                      f"({run.seconds / n * 1e3:.1f} ms/token)")

    for i in range(len(all_texts)):
        tally.check(f"{args.sparsity:g}x, {names[i]}", lambda i=i: one_sparse(i))

    def batch_sparse() -> Tuple[bool, str]:
        cache = make_cache(model, args, **budget)
        run = generate(model, tok, texts, n, cache)
        ok = all(torch.isfinite(x).all() for x in run.logits)
        return ok, f"lengths {cache.cached_tokens()}, attended fraction " \
                   f"{cache.selection_stats()['fraction']:.3f}"

    tally.check(f"{args.sparsity:g}x, batch of {len(texts)} (left padding)", batch_sparse)

    log("")
    log(f"==== outputs: dense vs {args.sparsity:g}x (sink {args.sink}, recent {args.recent}, "
        f"heavy n/{args.sparsity:g}, {args.selection} selection)")
    for i, name in enumerate(names):
        log(f"---- {name}: {PROMPTS[i] if i < len(PROMPTS) else '(long text)'}")
        log(f"dense: {tok.decode(dense[i].tokens[0], skip_special_tokens=True)!r}")
        if sparse[i] is not None:
            log(f"{args.sparsity:g}x:   "
                f"{tok.decode(sparse[i].tokens[0], skip_special_tokens=True)!r}")
    log("")
    log(f"{tally.passed} passed, {tally.failed} failed")
    return 0 if tally.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
