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
     tokens once n is past the windows, and the outputs are printed beside the dense ones;
  4. next to the C runner (--runner, a hashattn-run built with CUDA): long prompts
     (--cmp-tokens, 2-4K tokens of the text, sparse at the paper's budget: sink 128,
     recent 128, heavy n/16) are tokenized by the runner, and the same ids are generated
     greedily by transformers through the adapter and by hashattn-run --attn hash on
     CUDA with the same weights (and both dense, as the baseline of how far bf16
     implementations agree); the tokens, the first divergence and the agreement go to
     OUT/hf-e2e.json and OUT/hf-e2e.md (--out, default $OUT).

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
import json
import math
import os
import subprocess
import sys
import tempfile
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


def source_text(text_file: Optional[str], members: bool = False) -> str:
    """--text, else the standard library's module docstrings (and with members, the
    docstrings of their public classes and functions: tens of thousands of tokens)."""
    if text_file:
        with open(text_file, encoding="utf-8", errors="replace") as f:
            return f.read()
    parts = []
    for name in DOC_MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        parts.append(inspect.getdoc(mod) or "")
        if members:
            for key, obj in sorted(vars(mod).items()):
                if key.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                    continue
                doc = inspect.getdoc(obj)
                if doc and len(doc) > 80:
                    parts.append(f"{name}.{key}: {doc}")
    return "\n\n".join(parts)


SUMMARY_ASK = "\n\nTo summarise the text above in one sentence:"


def long_prompt(tok: Any, text_file: Optional[str], tokens: int) -> str:
    ids = tok(source_text(text_file), add_special_tokens=False)["input_ids"][:tokens]
    return tok.decode(ids) + SUMMARY_ASK


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


def generate_ids(model: Any, ids: List[int], new_tokens: int,
                 cache: Optional[hf.HashAttnCache] = None) -> Run:
    """Greedy generation from token ids (one sequence, no padding)."""
    x = torch.tensor([ids], dtype=torch.long, device=model.device)
    kw = hf.cache_kwargs(model, cache) if cache is not None else {}
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, **kw)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t
    return Run(out.sequences[:, x.shape[1]:].cpu(), [l.float().cpu() for l in out.logits], secs, cache)


def make_cache(model: Any, args: argparse.Namespace, **budget: Any) -> hf.HashAttnCache:
    weights = args.weights or "random"
    return hf.HashAttnCache(model, weights=weights, seed=args.seed, selection=args.selection,
                            block_size=args.block_size, record_selection=True,
                            dense_below=-1,  # sparse at every length, as hashattn-run's default
                            **budget)


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
    ap.add_argument("--runner", default=os.environ.get("HASHATTN_RUNNER"),
                    help="hashattn-run (built with CUDA) for the comparison; default "
                         "$HASHATTN_RUNNER; without it the comparison is skipped")
    ap.add_argument("--plugin", default=os.environ.get("HASHATTN_LIBRARY"),
                    help="the library hashattn-run loads (default $HASHATTN_LIBRARY)")
    ap.add_argument("--out", default=os.environ.get("OUT"),
                    help="folder for hf-e2e.json and hf-e2e.md (default $OUT)")
    ap.add_argument("--cmp-tokens", default="2048,3072,4000",
                    help="lengths of the comparison's long prompts (default %(default)s)")
    ap.add_argument("--cmp-sink", type=int, default=128)
    ap.add_argument("--cmp-recent", type=int, default=128)
    ap.add_argument("--cmp-new-tokens", type=int, default=32)
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
    # 4. next to the C runner
    if args.runner:
        compare_with_runner(model, tok, args, tally)
    else:
        log("")
        log("comparison with the C runner skipped: no --runner (or $HASHATTN_RUNNER)")

    log("")
    log(f"{tally.passed} passed, {tally.failed} failed")
    return 0 if tally.failed == 0 else 1


# ---- next to the C runner -----------------------------------------------------------------------


def escape_line(text: str) -> str:
    """One line of hashattn-run --prompts."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def first_divergence(a: List[int], b: List[int]) -> int:
    """Index of the first differing token; -1 when equal over the shorter length."""
    return next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), -1)


def compare_with_runner(model: Any, tok: Any, args: argparse.Namespace, tally: Tally) -> None:
    """Long prompts through transformers + adapter and through hashattn-run on CUDA."""
    n = args.cmp_new_tokens
    lengths = [int(x) for x in args.cmp_tokens.split(",") if x]
    weights = args.weights
    log("")
    log(f"==== next to the C runner ({args.runner}): {len(lengths)} prompts of {lengths} tokens, "
        f"{n} greedy tokens, sink {args.cmp_sink}, recent {args.cmp_recent}, heavy "
        f"n/{args.sparsity:g}, {args.selection} selection, weights {weights or 'NONE'}")
    if not weights:
        tally.check("comparison with the C runner", lambda: (False, "needs --weights (the same "
                    "file for both)"))
        return
    tmp = tempfile.mkdtemp(prefix="hf-e2e-")
    # prompts: consecutive slices of the text, so each is different prose
    ids_all = tok(source_text(args.text, members=True), add_special_tokens=False)["input_ids"]
    texts, off = [], 0
    for L in lengths:
        if off + L > len(ids_all):
            off = 0
        texts.append(tok.decode(ids_all[off:off + L]) + SUMMARY_ASK)
        off += L
    pfile = os.path.join(tmp, "prompts.txt")
    with open(pfile, "w", encoding="utf-8", newline="") as f:
        for t in texts:
            f.write(escape_line(t) + "\n")
    env = dict(os.environ)
    if args.plugin:
        env["HASHATTN_PLUGIN"] = args.plugin
    base = [args.runner, "--model", args.gguf, "--device", args.device if args.device.startswith("cuda")
            else "cpu", "--prompts", pfile, "--batch", "1", "--block-size", str(args.block_size)]

    def runner(extra: List[str], tag: str) -> List[List[int]]:
        jl = os.path.join(tmp, f"{tag}.jsonl")
        cmd = base + ["--max-new-tokens", str(n), "--ignore-eos", "--quiet", "--jsonl", jl] + extra
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"hashattn-run {tag} exited {p.returncode}: {p.stderr[-1500:]}")
        log(f"   runner {tag}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}")
        rows = {}
        with open(jl) as f:
            for line in f:
                j = json.loads(line)
                rows[j["index"]] = j["tokens"]
        return [rows[i] for i in range(len(texts))]

    result: dict = dict(date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                        gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                        torch=torch.__version__, transformers=transformers.__version__,
                        library=hashattn.library_path(), runner=args.runner, weights=weights,
                        budget=dict(sink=args.cmp_sink, recent=args.cmp_recent,
                                    heavy_fraction=1.0 / args.sparsity),
                        selection=args.selection, new_tokens=n, prompts=[])
    state: dict = {}

    def tokenize() -> Tuple[bool, str]:
        p = subprocess.run([args.runner, "--model", args.gguf, "--tokenize", "--prompts", pfile],
                           capture_output=True, text=True, env=env, timeout=120)
        if p.returncode != 0:
            return False, f"hashattn-run --tokenize exited {p.returncode}: {p.stderr[-800:]}"
        ids = [[int(x) for x in line.split()] for line in p.stdout.splitlines()[:len(texts)]]
        hf_ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        state["ids"] = ids
        same = [a == b for a, b in zip(ids, hf_ids)]
        ok = len(ids) == len(texts) and all(len(x) > args.cmp_sink + args.cmp_recent + 16 for x in ids)
        return ok, (f"prompt lengths {[len(x) for x in ids]} (the runner's ids feed both); "
                    f"transformers' GGUF tokenizer gives the same ids for {sum(same)}/{len(same)}")

    tally.check("comparison prompts tokenized by the runner", tokenize)
    if "ids" not in state:
        return
    ids = state["ids"]
    wflag = "per-head" if args.selection == "per_head" else "group"
    hash_args = ["--attn", "hash", "--hash-weights", weights, "--sink", str(args.cmp_sink), "--recent",
                 str(args.cmp_recent), "--heavy-fraction", repr(1.0 / args.sparsity), "--selection", wflag]

    def run_runner() -> Tuple[bool, str]:
        state["rn_hash"] = runner(hash_args, "hash")
        state["rn_dense"] = runner(["--attn", "dense"], "dense")
        ok = all(len(t) == n for t in state["rn_hash"] + state["rn_dense"])
        return ok, f"{len(ids)} prompts, {n} tokens each, hash and dense"

    tally.check(f"C runner on {base[4]} (hash at the comparison budget, and dense)", run_runner)

    budget = dict(sink_tokens=args.cmp_sink, recent_tokens=args.cmp_recent,
                  heavy_fraction=1.0 / args.sparsity)
    eos = set()
    for e in (tok.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        eos.update(e if isinstance(e, (list, tuple)) else [e] if e is not None else [])

    def upto_eos(t: List[int]) -> int:
        return next((k for k, x in enumerate(t) if x in eos), len(t))

    for i, pid in enumerate(ids):
        def one(i: int = i, pid: List[int] = pid) -> Tuple[bool, str]:
            model.set_attn_implementation("sdpa")
            hd = generate_ids(model, pid, n).tokens[0].tolist()
            model.set_attn_implementation(hf.ATTN_IMPLEMENTATION)
            cache = make_cache(model, args, **budget)
            run = generate_ids(model, pid, n, cache)
            hh = run.tokens[0].tolist()
            frac = cache.selection_stats()["fraction"]
            finite = all(torch.isfinite(x).all() for x in run.logits)
            row = dict(index=i, prompt_tokens=len(pid), prompt_head=texts[i][:160],
                       attended_fraction=frac, hf_hash=hh, hf_dense=hd)
            # transformers suppresses EOS until n tokens (min_new_tokens); the runner, with
            # --ignore-eos, still picks it: compare up to the runner's first EOS
            for key, a, b in (("hash", hh, state.get("rn_hash", [[]] * len(ids))[i]),
                              ("dense", hd, state.get("rn_dense", [[]] * len(ids))[i]),
                              ("hf_hash_vs_hf_dense", hh, hd)):
                m = min(upto_eos(a), upto_eos(b), len(a), len(b))
                d = first_divergence(a[:m], b[:m])
                row[f"{key}_compared"] = m
                row[f"{key}_first_divergence"] = d
                row[f"{key}_agree_prefix"] = m if d < 0 else d
            row["runner_hash"] = state.get("rn_hash", [None] * len(ids))[i]
            row["runner_dense"] = state.get("rn_dense", [None] * len(ids))[i]
            row["hf_hash_text"] = tok.decode(hh, skip_special_tokens=True)
            if row["runner_hash"]:
                row["runner_hash_text"] = tok.decode(row["runner_hash"], skip_special_tokens=True)
            result["prompts"].append(row)
            ok = finite and len(hh) == n and frac < 0.5
            return ok, (f"{len(pid)} tokens, attended {frac:.3f} of the cache; 16x: transformers vs "
                        f"runner agree on {row['hash_agree_prefix']}/{row['hash_compared']} tokens; "
                        f"dense: {row['dense_agree_prefix']}/{row['dense_compared']}; transformers "
                        f"16x vs dense {row['hf_hash_vs_hf_dense_agree_prefix']}/"
                        f"{row['hf_hash_vs_hf_dense_compared']}")

        tally.check(f"{args.sparsity:g}x vs the C runner, long prompt {i}", one)

    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "hf-e2e.json"), "w") as f:
            json.dump(result, f, indent=1)
        with open(os.path.join(args.out, "hf-e2e.md"), "w") as f:
            f.write(comparison_md(result))
        log(f"wrote {os.path.join(args.out, 'hf-e2e.json')} and hf-e2e.md")


def comparison_md(r: dict) -> str:
    b = r["budget"]
    out = [f"# transformers + adapter vs hashattn-run, {r['date']}", "",
           f"GPU {r['gpu']}, torch {r['torch']}, transformers {r['transformers']}; weights "
           f"`{os.path.basename(r['weights'])}`; sink {b['sink']}, recent {b['recent']}, heavy "
           f"{b['heavy_fraction']:g} of n, {r['selection']} selection; {r['new_tokens']} greedy tokens "
           f"from the runner's token ids. Agreement = equal leading tokens / tokens compared "
           f"(up to the first end-of-text of either side). Dense: both sides without hashing, "
           f"the baseline of how far the two implementations agree at this precision.", "",
           "| prompt | tokens | attended | 16x agree | first divergence | dense agree | "
           "transformers 16x vs dense |", "|---|---|---|---|---|---|---|"]
    for p in r["prompts"]:
        out.append(f"| {p['index']} | {p['prompt_tokens']} | {p['attended_fraction']:.3f} | "
                   f"{p['hash_agree_prefix']}/{p['hash_compared']} | "
                   f"{'none' if p['hash_first_divergence'] < 0 else p['hash_first_divergence']} | "
                   f"{p['dense_agree_prefix']}/{p['dense_compared']} | "
                   f"{p['hf_hash_vs_hf_dense_agree_prefix']}/{p['hf_hash_vs_hf_dense_compared']} |")
    out.append("")
    for p in r["prompts"]:
        out += [f"## prompt {p['index']} ({p['prompt_tokens']} tokens)", "",
                f"- transformers 16x: `{p['hf_hash']}`", f"- runner 16x: `{p['runner_hash']}`",
                f"- transformers 16x text: {p['hf_hash_text']!r}",
                f"- runner 16x text: {p.get('runner_hash_text', '')!r}", ""]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
