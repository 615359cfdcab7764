"""hashattn-eval: long-text quality and passkey retrieval of sparse-attention methods.

The model (SmolLM2-135M-Instruct from its GGUF file, through transformers) runs with a
registered attention function, ``hashattn_eval``, that applies one method to the last
``decode`` query rows of each forward pass and dense causal attention to the rows
before them. That one forward pass is exactly teacher-forced sparse decoding of those
rows after a dense prefill: at every layer, a decode row's query attends to the keys
its method selects among all earlier tokens (prefix and decode region), and each
token's K/V at a layer come from its own hidden states, which are sparse for decode
rows in both cases. The masks are built per layer from that layer's post-RoPE q and k.

See docs/quality.md for the methods, the metrics and the commands.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import passkey as pk
from . import select as sel
from .stats import bootstrap_mean

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
NOVELS = ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice",
          "sensesensibility"]
ATTN_NAME = "hashattn_eval"

METHODS = ["oracle", "streaming", "random", "srp", "quest", "hash-paper-head",
           "hash-paper-group", "hash-compact-head", "hash-compact-group"]
DESCRIBE = {
    "dense": "every visible token",
    "oracle": "top-K candidates by true q.k per head (ceiling)",
    "streaming": "sink + last R+K tokens (StreamingLLM)",
    "random": "K random candidates per head",
    "srp": "untrained 32-bit sign random projection, per head",
    "quest": "Quest pages of 16 by min/max bound, per head",
    "hash-paper-head": "HashAttention, paper signatures, per-head selection",
    "hash-paper-group": "HashAttention, paper signatures, group selection",
    "hash-compact-head": "HashAttention, compact signatures, per-head selection",
    "hash-compact-group": "HashAttention, compact signatures, group selection",
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ---- model ------------------------------------------------------------------------------


def load_model(path: str, device: str, dtype: torch.dtype) -> Tuple[Any, Any]:
    """(model, tokenizer) of a GGUF file through transformers' GGUF support (which
    un-permutes llama.cpp's q/k rows: transformers' RoPE is the half-split one)."""
    import importlib.util

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise SystemExit("hashattn-eval: the gguf package is not importable; put the folder "
                         "of its wheel (or where it is installed) on PYTHONPATH")
    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if importlib.util.find_spec("accelerate") is not None:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    else:  # from_pretrained(gguf_file=) needs accelerate; this is the same conversion
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        cfg = AutoConfig.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
        res = model.load_state_dict(tensors, strict=False)
        missing = set(res.missing_keys) - {"lm_head.weight"}
        if missing or res.unexpected_keys:
            raise SystemExit(f"hashattn-eval: GGUF tensors do not fit the model: missing "
                             f"{sorted(missing)}, unexpected {sorted(res.unexpected_keys)}")
        model.tie_weights()
    model = model.to(device=device, dtype=dtype).eval()
    return model, tok


# ---- methods -----------------------------------------------------------------------------


@dataclass
class Method:
    name: str
    weights: Optional[Dict[str, Dict[str, torch.Tensor]]] = None  # hash: query/key per layer
    compact: bool = False
    group: bool = False


SHIPPED = {"paper": os.path.join(ROOT, "weights", "smollm2-135m-hash.safetensors"),
           "paper-head": os.path.join(ROOT, "weights", "smollm2-135m-hash-head.safetensors"),
           "compact": os.path.join(ROOT, "weights", "smollm2-135m-hash-compact.safetensors")}


def weights_for(name: str, paper: Optional[str] = None, paper_head: Optional[str] = None,
                compact: Optional[str] = None) -> str:
    """The weight file of hash method `name`: the compact file, the paper file (trained
    for group selection), or for hash-paper-head the per-head file: paper_head if given,
    else the shipped per-head file when the paper file is the shipped one too, else
    the paper file (a pair under test is one file per layout)."""
    if "compact" in name:
        return compact or SHIPPED["compact"]
    paper = paper or SHIPPED["paper"]
    if not name.endswith("head"):
        return paper
    if paper_head:
        return paper_head
    same = os.path.abspath(paper) == os.path.abspath(SHIPPED["paper"])
    return SHIPPED["paper-head"] if same and os.path.exists(SHIPPED["paper-head"]) else paper


def load_hash_weights(path: str, device: str) -> Tuple[Dict[str, torch.Tensor],
                                                         Dict[str, torch.Tensor], Dict[str, str]]:
    """(query, key, metadata) of a hashattn weight file as float32 torch tensors
    [L, H, ...] on ``device`` (read with the adapter's reader)."""
    from hashattn.weights import read_weights

    q, k, meta = read_weights(path)
    conv = lambda side: {p: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
                         for p, a in side.items()}
    return conv(q), conv(k), meta


class State:
    """What the attention function needs for the forward pass in flight."""

    def __init__(self) -> None:
        self.method = Method("dense")
        self.budget = sel.Budget()
        self.decode_rows = 0
        self.row_chunk = 1024
        self.seed = 0
        self.srp: Optional[torch.Tensor] = None
        self.gen: Optional[torch.Generator] = None
        self.mass: Dict[int, List[float]] = {}      # layer -> [sum over heads and rows, rows*heads]
        self.capture_layers: Sequence[int] = ()
        self.captured: Dict[int, Tuple[torch.Tensor, ...]] = {}
        # diagnostic (layers.py): hash methods take the oracle's selection in these layers
        self.oracle_layers: frozenset = frozenset()

    def begin(self, method: Method, budget: sel.Budget, decode_rows: int, device: Any,
              tag: int) -> None:
        self.method, self.budget, self.decode_rows = method, budget, decode_rows
        self.mass = {}
        self.gen = torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + tag)


STATE = State()


def _mask_for(layer: int, module_groups: int, q: torch.Tensor, k: torch.Tensor,
              pos: torch.Tensor, logits: torch.Tensor, prep: Dict[str, Any]) -> torch.Tensor:
    """The method's mask [Hq, rows, S] for query rows q [Hq, rows, D] at positions pos,
    keys k [Hkv, S, D]; ``prep`` caches per-layer key-side work across row chunks."""
    m, b = STATE.method, STATE.budget
    hq, rows, _ = q.shape
    S = k.shape[1]
    if m.name == "dense":
        return sel.visible_mask(pos, S).unsqueeze(0).expand(hq, rows, S)
    if m.name == "oracle":
        return sel.oracle_mask(logits, pos, b)
    if m.name == "streaming":
        return sel.streaming_mask(pos, S, b, hq)
    if m.name == "random":
        return sel.random_mask(pos, S, b, hq, STATE.gen)
    if m.name == "srp":
        planes = STATE.srp[layer].to(q.device)                       # [Hkv, D, 32]
        if "k_bits" not in prep:
            prep["k_bits"] = torch.matmul(k, planes) > 0             # [Hkv, S, 32]
        q_bits = torch.matmul(q, planes.repeat_interleave(module_groups, 0)) > 0
        return sel.hash_mask(q_bits, prep["k_bits"], pos, b, module_groups, False)
    if m.name == "quest":
        if "bounds" not in prep:
            prep["bounds"] = sel.page_bounds(k, 16)
        return sel.quest_mask(q, k, pos, b, 16, prep["bounds"])
    if m.name.startswith("hash-"):
        if layer in STATE.oracle_layers:
            return sel.oracle_mask(logits, pos, b)
        wq = {p: t[layer] for p, t in m.weights["query"].items()}
        if "k_bits" not in prep:
            wk = {p: t[layer] for p, t in m.weights["key"].items()}
            keys = k if m.compact else k.repeat_interleave(module_groups, 0)
            prep["k_bits"] = sel.hash_mlp_bits(keys, wk)
        q_bits = sel.hash_mlp_bits(q, wq)
        return sel.hash_mask(q_bits, prep["k_bits"], pos, b, module_groups, m.group)
    raise ValueError(f"unknown method {m.name!r}")


def attention_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: Any, scaling: Optional[float] = None, dropout: float = 0.0,
                      **kwargs: Any) -> Tuple[torch.Tensor, None]:
    """Dense causal attention for the prefix rows, the method's sparse attention for the
    last STATE.decode_rows rows. query [B, Hq, S, D], key/value [B, Hkv, S, D]
    (post-RoPE); returns [B, S, Hq, D]."""
    B, hq, S, D = query.shape
    hkv = key.shape[1]
    g = hq // hkv
    layer = int(module.layer_idx)
    scale = scaling if scaling is not None else 1.0 / math.sqrt(D)
    L = min(STATE.decode_rows, S)
    P = S - L
    out = torch.empty_like(query)
    kr = key.repeat_interleave(g, dim=1)
    vr = value.repeat_interleave(g, dim=1)
    if P > 0:
        out[:, :, :P] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, :P], kr[:, :, :P], vr[:, :, :P], is_causal=True, scale=scale)
    mass_sum, mass_n = 0.0, 0
    for bi in range(B):
        k32 = key[bi].float()
        kr32, vr32 = kr[bi].float(), vr[bi].float()
        if layer in STATE.capture_layers and STATE.method.name == "dense" and bi == 0:
            STATE.captured[layer] = (query[0].float().cpu(), key[0].float().cpu(),
                                     value[0].float().cpu())
        prep: Dict[str, Any] = {}
        for r0 in range(P, S, STATE.row_chunk):
            r1 = min(S, r0 + STATE.row_chunk)
            q = query[bi, :, r0:r1].float()                          # [Hq, r, D]
            pos = torch.arange(r0, r1, device=query.device)
            logits = torch.matmul(q, kr32.transpose(1, 2)) * scale   # [Hq, r, S]
            mask = _mask_for(layer, g, q, k32, pos, logits, prep)
            vis = sel.visible_mask(pos, S).unsqueeze(0)
            full = torch.softmax(logits.masked_fill(~vis, float("-inf")), dim=-1)
            mass = (full * mask).sum(-1)                             # [Hq, r]
            mass_sum += float(mass.sum())
            mass_n += mass.numel()
            del full
            p = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
            out[bi, :, r0:r1] = torch.matmul(p, vr32).to(out.dtype)
    if mass_n:
        acc = STATE.mass.setdefault(layer, [0.0, 0])
        acc[0] += mass_sum
        acc[1] += mass_n
    return out.transpose(1, 2).contiguous(), None


def mask_function(*args: Any, **kwargs: Any) -> None:
    """No mask tensor: attention_forward is causal by itself (no padding is used)."""
    return None


def register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, mask_function)


def forward_logits(model: Any, ids: torch.Tensor, keep: int) -> torch.Tensor:
    """log-softmax of the last ``keep`` positions' logits, float32 [B, keep, V]."""
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=False, logits_to_keep=keep)
    return torch.log_softmax(out.logits[:, -keep:].float(), dim=-1)


# ---- text ---------------------------------------------------------------------------------


def find_text_dir(given: Optional[str]) -> str:
    cands = [given] if given else [os.path.join(ROOT, ".eval-data", "austen"),
                                   os.path.join(os.environ.get("HASHATTN_CACHE", os.path.expanduser(
                                       "~/.cache/hashattn")), "austen")]
    for c in cands:
        if c and all(os.path.isfile(os.path.join(c, n + ".txt")) for n in NOVELS):
            return c
    raise SystemExit(f"hashattn-eval: no Austen texts in {cands}; run scripts/austen-text "
                     "(--bundle .eval-data/austen for a machine without apt)")


def make_windows(tok: Any, text_dir: str, count: int, length: int, seed: int
                 ) -> List[Dict[str, Any]]:
    """``count`` windows of ``length`` tokens, novel w % 6 for window w, each starting at
    a paragraph at a seeded position past the novel's first 5%."""
    rng = np.random.default_rng(seed)
    out = []
    for w in range(count):
        novel = NOVELS[w % len(NOVELS)]
        with open(os.path.join(text_dir, novel + ".txt"), encoding="utf-8") as f:
            text = f.read()
        span = length * 8  # characters; Austen runs about 4.3 characters per token
        lo = len(text) // 20
        hi = max(lo + 1, len(text) - span)
        start = int(rng.integers(lo, hi))
        para = text.find("\n\n", start)
        start = para + 2 if 0 <= para < hi else start
        ids = tok(text[start:start + span], add_special_tokens=False)["input_ids"]
        while len(ids) < length and start + span < len(text):
            span *= 2
            ids = tok(text[start:start + span], add_special_tokens=False)["input_ids"]
        if len(ids) < length:
            raise SystemExit(f"hashattn-eval: {novel} has fewer than {length} tokens after "
                             f"character {start}")
        out.append({"novel": novel, "char_start": start, "ids": ids[:length]})
    return out


# ---- the evaluations ----------------------------------------------------------------------


def mean_density(positions: np.ndarray, b: sel.Budget) -> float:
    """Mean attended fraction T(n)/n over rows at ``positions``."""
    n = positions.astype(np.float64) + 1
    k = np.floor(n * b.fraction)
    t = np.minimum(n, b.sink + b.recent + k)
    return float(np.mean(t / n))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_quality(model: Any, windows: List[Dict[str, Any]], methods: List[Method],
                fractions: List[float], args: argparse.Namespace, deadline: float
                ) -> Dict[str, Any]:
    """Per (method, sparsity): per-token loss difference, KL, top-1 agreement and
    attention mass over every window's decode region."""
    device = args.device
    S, L = args.context, args.decode
    per: Dict[Tuple[str, float], Dict[str, List[Any]]] = {}
    done_windows = []
    for wi, w in enumerate(windows):
        if wi > 0 and time.time() + done_windows[-1]["seconds"] > deadline:
            log(f"quality: another window would end past the deadline; {wi} of "
                f"{len(windows)} windows evaluated")
            break
        t0 = time.time()
        ids = torch.tensor(w["ids"], device=device).unsqueeze(0)     # S + 1 tokens
        inp, tgt = ids[:, :S], ids[0, S - L + 1:S + 1]
        STATE.capture_layers = args.crosscheck_layers if wi == 0 else ()
        STATE.begin(Method("dense"), sel.Budget(args.sink, args.recent, 0.0), L, device, 0)
        lp_d = forward_logits(model, inp, L)[0]
        STATE.capture_layers = ()
        nll_d = -lp_d.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        top_d = lp_d.argmax(-1)
        p_d = lp_d.exp()
        w_out = {"novel": w["novel"], "char_start": w["char_start"],
                 "dense_nll": float(nll_d.mean())}
        if wi == 0:
            # the dense pass of this attention function against transformers' own
            model.set_attn_implementation("sdpa")
            lp_ref = forward_logits(model, inp, L)[0]
            model.set_attn_implementation(ATTN_NAME)
            w_out["dense_vs_sdpa_max_logprob_diff"] = float((lp_ref - lp_d).abs().max())
            w_out["dense_vs_sdpa_top1_agreement"] = float((lp_ref.argmax(-1) == top_d)
                                                          .double().mean())
            log(f"quality: dense pass vs transformers' sdpa: max |log p| difference "
                f"{w_out['dense_vs_sdpa_max_logprob_diff']:.2e}, top-1 agreement "
                f"{w_out['dense_vs_sdpa_top1_agreement'] * 100:.2f}%")
            del lp_ref
        for f in fractions:
            b = sel.Budget(args.sink, args.recent, f)
            for mi, m in enumerate(methods):
                STATE.begin(m, b, L, device, 1000 * wi + 10 * mi + int(round(1 / f)))
                lp = forward_logits(model, inp, L)[0]
                nll = -lp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
                kl = (p_d * (lp_d - lp)).sum(-1)
                d = per.setdefault((m.name, f), {"dloss": [], "kl": [], "top1": [], "mass": []})
                d["dloss"].append((nll - nll_d).double().cpu().numpy())
                d["kl"].append(kl.double().cpu().numpy())
                d["top1"].append((lp.argmax(-1) == top_d).double().cpu().numpy())
                layers = sorted(STATE.mass)
                d["mass"].append([STATE.mass[i][0] / STATE.mass[i][1] for i in layers])
        sync(device)
        w_out["seconds"] = time.time() - t0
        done_windows.append(w_out)
        log(f"quality: window {wi + 1}/{len(windows)} ({w['novel']}, dense loss "
            f"{w_out['dense_nll']:.3f} nats/token) in {w_out['seconds']:.1f} s")

    positions = np.arange(S - L, S)
    results = []
    for (name, f), d in per.items():
        b = sel.Budget(args.sink, args.recent, f)
        mass_layers = np.mean(np.array(d["mass"]), axis=0)
        results.append({
            "method": name, "sparsity": round(1 / f, 6), "fraction": f,
            "attended_fraction": mean_density(positions, b),
            "loss_diff": bootstrap_mean(d["dloss"], args.block, seed=args.seed),
            "kl": bootstrap_mean(d["kl"], args.block, seed=args.seed),
            "top1": bootstrap_mean(d["top1"], args.block, seed=args.seed),
            "mass": float(mass_layers.mean()),
            "mass_per_layer": [float(x) for x in mass_layers],
        })
    return {"windows": done_windows, "results": results,
            "interval": f"95% block bootstrap: blocks of {args.block} consecutive decode "
                        f"tokens from all windows, 2000 resamples, percentile interval"}


def run_passkey(model: Any, tok: Any, methods: List[Method], fractions: List[float],
                args: argparse.Namespace, deadline: float) -> Dict[str, Any]:
    """Teacher-forced passkey accuracy per (method, sparsity, context)."""
    device = args.device
    tokenize = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows: List[Dict[str, Any]] = []
    contexts_done = []
    for ci, c in enumerate(args.passkey_contexts):
        if contexts_done:
            # the cost grows at most with the square of the length (attention)
            last = contexts_done[-1]
            guess = last["seconds"] * max(1.0, c / last["context"]) ** 2
            if time.time() + guess > deadline:
                log(f"passkey: context {c} (about {guess:.0f} s) would end past the deadline; "
                    "stopped")
                break
        t0 = time.time()
        prompts = [pk.make_prompt(tokenize, c, d, s) for s in range(args.passkey_seeds)
                   for d in args.passkey_depths]
        A = prompts[0].answer_len
        if any(p.answer_len != A for p in prompts):
            raise SystemExit("hashattn-eval: passkey answers tokenize to different lengths")
        ids = torch.tensor([p.ids for p in prompts], device=device)
        inp, ans = ids[:, :-1], ids[:, -A:]

        def score(m: Method, b: sel.Budget, tag: int) -> List[bool]:
            ok: List[bool] = []
            for s0 in range(0, len(prompts), args.passkey_batch):
                STATE.begin(m, b, A, device, tag)
                lp = forward_logits(model, inp[s0:s0 + args.passkey_batch], A)
                ok += (lp.argmax(-1) == ans[s0:s0 + args.passkey_batch]).all(-1).tolist()
            return ok

        dense = score(Method("dense"), sel.Budget(args.sink, args.recent, 0.0), 0)
        rows.append({"method": "dense", "sparsity": 1.0, "context": c,
                     "accuracy": float(np.mean(dense)), "prompts": len(dense),
                     "correct": [bool(x) for x in dense]})
        for f in fractions:
            b = sel.Budget(args.sink, args.recent, f)
            for mi, m in enumerate(methods):
                ok = score(m, b, 7 + 10 * mi + int(round(1 / f)))
                rows.append({"method": m.name, "sparsity": round(1 / f, 6), "context": c,
                             "accuracy": float(np.mean(ok)), "prompts": len(ok),
                             "correct": [bool(x) for x in ok]})
        sync(device)
        contexts_done.append({"context": c, "seconds": time.time() - t0,
                              "dense_accuracy": float(np.mean(dense))})
        log(f"passkey: context {c}: dense {np.mean(dense):.2f} over {len(dense)} prompts, "
            f"{len(methods) * len(fractions)} sparse runs in {time.time() - t0:.1f} s")
    return {"contexts": contexts_done, "rows": rows,
            "depths": list(args.passkey_depths), "seeds": args.passkey_seeds,
            "scoring": "teacher-forced: the answer's tokens are fed after a dense prefill of "
                       "the prompt; retrieved when the argmax at every answer position is the "
                       "answer token"}


# ---- cross-check against the plugin --------------------------------------------------------


def crosscheck(args: argparse.Namespace, methods: List[Method]) -> Dict[str, Any]:
    """The plugin's own decode selection (CPU backend, through the Python adapter) for a
    few rows of window 0, against this evaluation's selection rule: with the plugin's
    signatures the sets must be equal; with the evaluation's torch signatures (same MLP,
    different rounding) the differing bits and sets are counted."""
    try:
        import hashattn
        path = hashattn.library_path()
    except Exception as e:  # no library built here
        return {"status": "skipped", "why": f"libhashattn not found: {e}"}
    out: Dict[str, Any] = {"status": "ok", "library": path, "version": hashattn.version(),
                           "cases": []}
    S = args.context
    rows = list(range(S - args.crosscheck_rows, S))
    f = 1 / 16 if 1 / 16 in args.fractions else args.fractions[0]
    b = sel.Budget(args.sink, args.recent, f)
    for m in methods:
        if not m.name.startswith("hash-"):
            continue
        wfile = weights_for(m.name, args.weights_paper, args.weights_paper_head, args.weights_compact)
        for layer, (q, k, v) in sorted(STATE.captured.items()):
            hq, hkv, D = q.shape[0], k.shape[0], q.shape[2]
            ctx = hashattn.Context.from_weights(
                wfile, block_size=16, dtype="float32", device="cpu",
                selection="group" if m.group else "per_head",
                budget=hashattn.Budget(b.sink, b.recent, -1, b.fraction))
            nb = -(-S // 16)
            kc, vc, sc = ctx.allocate_caches(nb)
            kn = np.ascontiguousarray(k.transpose(0, 1).numpy())        # [S, Hkv, D]
            vn = np.ascontiguousarray(v.transpose(0, 1).numpy())
            ctx.cache_write(layer, kn, vn, kc, vc, sc, np.arange(S, dtype=np.int64))
            table = np.arange(nb, dtype=np.int32).reshape(1, nb)
            qn = np.ascontiguousarray(q.transpose(0, 1).numpy())        # [S, Hq, D]
            qsig = ctx.hash(layer, qn[rows], "query")                     # [r, Hq]
            ksig = sc.transpose(0, 2, 1).reshape(nb * 16, -1)[:S]         # [S, Hsig]
            # the evaluation's signatures for the same vectors
            wq = {p: t[layer].cpu() for p, t in m.weights["query"].items()}
            wk = {p: t[layer].cpu() for p, t in m.weights["key"].items()}
            keys = k if m.compact else k.repeat_interleave(hq // hkv, 0)
            e_k = sel.hash_mlp_bits(keys, wk)                              # [Hsig, S, 32]
            e_q = sel.hash_mlp_bits(q[:, rows], wq)                        # [Hq, r, 32]
            p_k = _unpack(torch.from_numpy(ksig.astype(np.int64)).transpose(0, 1))
            p_q = _unpack(torch.from_numpy(qsig.astype(np.int64)).transpose(0, 1))
            bits_k = int((e_k != p_k).sum())
            bits_q = int((e_q != p_q).sum())
            pos = torch.tensor(rows)
            mine_p = sel.hash_mask(p_q, p_k, pos, b, hq // hkv, m.group)    # plugin signatures
            mine_e = sel.hash_mask(e_q, e_k, pos, b, hq // hkv, m.group)    # eval signatures
            equal_p = equal_e = 0
            units = 0
            for ri, t in enumerate(rows):
                _, idx, cnt = ctx.decode(layer, qn[t:t + 1], kc, vc, sc, table,
                                         np.array([t + 1], np.int32), return_selection=True)
                for u in range(idx.shape[1]):
                    got = np.zeros(S, bool)
                    got[idx[0, u, :cnt[0, u]]] = True
                    h = u * (hq // hkv) if m.group else u
                    equal_p += bool(np.array_equal(got, mine_p[h, ri].numpy()))
                    equal_e += bool(np.array_equal(got, mine_e[h, ri].numpy()))
                    units += 1
            ctx.close()
            case = {"method": m.name, "layer": layer, "rows": rows, "units": units,
                    "equal_with_plugin_signatures": equal_p,
                    "equal_with_eval_signatures": equal_e,
                    "differing_key_bits": bits_k, "key_bits": int(e_k.numel()),
                    "differing_query_bits": bits_q, "query_bits": int(e_q.numel())}
            out["cases"].append(case)
            log(f"crosscheck {m.name} layer {layer}: selection equal to the plugin's in "
                f"{equal_p}/{units} (plugin signatures), {equal_e}/{units} (eval signatures); "
                f"signature bits differing: keys {bits_k}/{e_k.numel()}, "
                f"queries {bits_q}/{e_q.numel()}")
            if equal_p != units:
                out["status"] = "FAILED"
    return out


def _unpack(sig: torch.Tensor) -> torch.Tensor:
    """int64 signatures [...] -> bool bits [..., 32], bit i = (sig >> i) & 1."""
    return ((sig.unsqueeze(-1) >> torch.arange(32)) & 1).bool()


# ---- report --------------------------------------------------------------------------------


def fmt_ci(r: Dict[str, float], scale: float = 1.0, digits: int = 3) -> str:
    return (f"{r['mean'] * scale:.{digits}f} [{r['lo'] * scale:.{digits}f}, "
            f"{r['hi'] * scale:.{digits}f}]")


def markdown(report: Dict[str, Any]) -> str:
    lines: List[str] = []
    cfg = report["config"]
    lines.append(f"hashattn-eval, {report['date']}, {report['hardware']}; model "
                 f"{os.path.basename(cfg['model'])}, {cfg['dtype']}; budget: sink "
                 f"{cfg['sink']} + recent {cfg['recent']} + heavy floor(n/sparsity)")
    q = report.get("quality")
    if q and q["results"]:
        lines.append("")
        lines.append(f"Long text: {len(q['windows'])} window(s) of {cfg['context']} tokens "
                     f"({', '.join(w['novel'] for w in q['windows'])}), dense prefill, last "
                     f"{cfg['decode']} rows decoded sparsely (teacher-forced); interval: "
                     f"{q['interval']}.")
        w0 = q["windows"][0]
        if "dense_vs_sdpa_max_logprob_diff" in w0:
            lines.append("")
            lines.append(f"Dense pass of the evaluation's attention against transformers' sdpa "
                         f"(window 1): max |log p| difference "
                         f"{w0['dense_vs_sdpa_max_logprob_diff']:.2e}, top-1 agreement "
                         f"{w0['dense_vs_sdpa_top1_agreement'] * 100:.2f}%. Dense loss per "
                         f"window: " + ", ".join(f"{w['novel']} {w['dense_nll']:.3f}"
                                                 for w in q["windows"]) + " nats/token.")
        for sp in sorted({r["sparsity"] for r in q["results"]}):
            rs = [r for r in q["results"] if r["sparsity"] == sp]
            lines.append("")
            lines.append(f"**{sp:g}x** (attended fraction T/n = "
                         f"{rs[0]['attended_fraction']:.4f}, i.e. {1 / rs[0]['attended_fraction']:.1f}x "
                         f"fewer tokens than dense)")
            lines.append("")
            lines.append("| method | loss - dense, nats/token [95%] | KL(dense‖method) | "
                         "top-1 agreement | attention mass |")
            lines.append("|---|---|---|---|---|")
            for r in sorted(rs, key=lambda r: r["loss_diff"]["mean"]):
                lines.append(f"| {r['method']} | {fmt_ci(r['loss_diff'], 1, 4)} | "
                             f"{r['kl']['mean']:.4f} | {r['top1']['mean'] * 100:.1f}% | "
                             f"{r['mass']:.3f} |")
    p = report.get("passkey")
    if p and p["rows"]:
        ctxs = [c["context"] for c in p["contexts"]]
        lines.append("")
        lines.append(f"Passkey retrieval ({p['scoring']}); depths {p['depths']}, "
                     f"{p['seeds']} seed(s) per depth; accuracy:")
        lines.append("")
        lines.append("| method | sparsity | " + " | ".join(f"{c}" for c in ctxs) + " | all |")
        lines.append("|---|---|" + "---|" * (len(ctxs) + 1))
        keys = []
        for r in p["rows"]:
            if (r["method"], r["sparsity"]) not in keys:
                keys.append((r["method"], r["sparsity"]))
        keys.sort(key=lambda k: (k[1], k[0] != "dense"))
        for name, sp in keys:
            cells, allc = [], []
            for c in ctxs:
                hit = [r for r in p["rows"] if r["method"] == name and r["sparsity"] == sp
                       and r["context"] == c]
                cells.append(f"{hit[0]['accuracy'] * 100:.0f}%" if hit else "-")
                if hit:
                    allc += hit[0]["correct"]
            lines.append(f"| {name} | {'-' if name == 'dense' else f'{sp:g}x'} | "
                         + " | ".join(cells) + f" | {np.mean(allc) * 100:.0f}% |")
    t = report.get("targets")
    if t:
        lines.append("")
        lines.append("Targets (issue 6):")
        lines.append("")
        lines.append("| method | target | value | met |")
        lines.append("|---|---|---|---|")
        for row in t:
            lines.append(f"| {row['method']} | {row['target']} | {row['value']} | "
                         f"{'yes' if row['met'] else ('n/a' if row['met'] is None else 'no')} |")
    c = report.get("crosscheck")
    if c:
        lines.append("")
        if c["status"] == "skipped":
            lines.append(f"Cross-check against the plugin: skipped ({c['why']}).")
        else:
            tot = sum(x["units"] for x in c["cases"])
            eq_p = sum(x["equal_with_plugin_signatures"] for x in c["cases"])
            eq_e = sum(x["equal_with_eval_signatures"] for x in c["cases"])
            kb = sum(x["differing_key_bits"] for x in c["cases"])
            kt = sum(x["key_bits"] for x in c["cases"])
            lines.append(f"Cross-check against the plugin ({c['version']}, CPU backend): "
                         f"{eq_p}/{tot} selections equal given the plugin's signatures, "
                         f"{eq_e}/{tot} with the evaluation's own torch signatures "
                         f"({kb} of {kt} key signature bits differ); {c['status']}.")
    lines.append("")
    lines.append("Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["timings"].items()))
    return "\n".join(lines) + "\n"


def targets(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The issue's targets, checked for every HashAttention variant that ran."""
    out: List[Dict[str, Any]] = []
    q = report.get("quality") or {"results": []}
    res = {(r["method"], r["sparsity"]): r for r in q["results"]}

    def loss(m: str, sp: float) -> Optional[float]:
        r = res.get((m, sp))
        return r["loss_diff"]["mean"] if r else None

    for m in [x for x in METHODS if x.startswith("hash-")]:
        h16 = loss(m, 16.0)
        if h16 is not None:
            s16, srp16, q16 = loss("streaming", 16.0), loss("srp", 16.0), loss("quest", 16.0)
            if s16 is not None:
                out.append({"method": m, "target": "16x: loss diff <= 1/3 of streaming's",
                            "value": f"{h16:.4f} vs {s16 / 3:.4f}", "met": h16 <= s16 / 3})
            if srp16 is not None and q16 is not None:
                out.append({"method": m, "target": "16x: loss diff below SRP's and Quest's",
                            "value": f"{h16:.4f} vs {srp16:.4f}, {q16:.4f}",
                            "met": h16 < srp16 and h16 < q16})
            t1 = res[(m, 16.0)]["top1"]["mean"]
            out.append({"method": m, "target": "16x: top-1 agreement >= 95%",
                        "value": f"{t1 * 100:.1f}%", "met": t1 >= 0.95})
        h32, q16 = loss(m, 32.0), loss("quest", 16.0)
        if h32 is not None and q16 is not None:
            out.append({"method": m, "target": "32x loss diff <= Quest's at 16x",
                        "value": f"{h32:.4f} vs {q16:.4f}", "met": h32 <= q16})
    p = report.get("passkey") or {"rows": []}
    dense = {r["context"]: r["accuracy"] for r in p["rows"] if r["method"] == "dense"}
    for m in [x for x in METHODS if x.startswith("hash-")]:
        rs = [r for r in p["rows"] if r["method"] == m and r["sparsity"] == 16.0]
        if not rs:
            continue
        worst, where = None, []
        for r in rs:
            if dense.get(r["context"], 0) >= 0.5:
                gap = (dense[r["context"]] - r["accuracy"]) * 100
                where.append(f"{r['context']}: {gap:+.0f}")
                worst = gap if worst is None else max(worst, gap)
        out.append({"method": m, "target": "16x passkey within 5 points of dense (dense >= 50%)",
                    "value": ("points below dense " + ", ".join(where)) if where
                    else "dense < 50% everywhere", "met": None if worst is None else worst <= 5})
    return out


# ---- main -----------------------------------------------------------------------------------


def parse_list(kind: Callable[[str], Any]) -> Callable[[str], List[Any]]:
    return lambda s: [kind(x) for x in s.split(",") if x.strip()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="hashattn-eval", description=__doc__.split("\n")[0])
    cache = os.environ.get("HASHATTN_CACHE", os.path.expanduser("~/.cache/hashattn"))
    ap.add_argument("--model", default=os.path.join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--text-dir", help="folder of the novels' texts (scripts/austen-text); "
                    "default .eval-data/austen, else $HASHATTN_CACHE/austen")
    ap.add_argument("--weights-paper", default=SHIPPED["paper"],
                    help="paper-layout file for group selection (default: the shipped one)")
    ap.add_argument("--weights-paper-head",
                    help="paper-layout file for hash-paper-head (default: the shipped per-head file "
                    "with the shipped --weights-paper, else --weights-paper)")
    ap.add_argument("--weights-compact", default=SHIPPED["compact"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="model weights and activations (the attention math is float32)")
    ap.add_argument("--context", type=int, default=8192, help="window length in tokens")
    ap.add_argument("--decode", type=int, default=2048,
                    help="decode rows at the end of each window (the rest is dense prefill)")
    ap.add_argument("--windows", type=int, default=6, help="windows (novel w %% 6 for window w)")
    ap.add_argument("--methods", type=parse_list(str), default=METHODS,
                    help="comma list of: " + ", ".join(METHODS))
    ap.add_argument("--sparsity", type=parse_list(float), default=[8.0, 16.0, 32.0],
                    help="heavy budget floor(n / SPARSITY), comma list")
    ap.add_argument("--sink", type=int, default=128)
    ap.add_argument("--recent", type=int, default=128)
    ap.add_argument("--passkey-contexts", type=parse_list(int), default=[1024, 2048, 4096, 8192])
    ap.add_argument("--passkey-depths", type=parse_list(float), default=[0.1, 0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--passkey-seeds", type=int, default=2)
    ap.add_argument("--passkey-batch", type=int, default=16, help="prompts per forward pass")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--no-passkey", action="store_true")
    ap.add_argument("--crosscheck", default="auto", choices=["auto", "on", "off"],
                    help="compare with the plugin's selection (auto: when libhashattn is found)")
    ap.add_argument("--crosscheck-layers", type=parse_list(int), default=[0, 15, 29])
    ap.add_argument("--crosscheck-rows", type=int, default=4)
    ap.add_argument("--row-chunk", type=int, default=1024, help="decode rows per attention chunk")
    ap.add_argument("--block", type=int, default=128, help="bootstrap block (tokens)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--deadline", type=float, default=0.0,
                    help="seconds after start by which the run should end (0 = none): a "
                         "window or passkey context that would end later (estimated from "
                         "the previous one) is not started; what ran is reported")
    ap.add_argument("--quality-deadline", type=float, default=0.0,
                    help="the same for the long-text windows alone, so that the passkey part "
                         "keeps its time (0 = --deadline)")
    ap.add_argument("--out", help="folder for quality.json and quality.md")
    args = ap.parse_args(argv)

    start = time.time()
    deadline = start + args.deadline if args.deadline > 0 else float("inf")
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        ap.error(f"unknown methods {bad}; choose from {METHODS}")
    if args.decode >= args.context:
        ap.error("--decode must be smaller than --context")
    args.fractions = [1.0 / s for s in args.sparsity]
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    dtype = getattr(torch, args.dtype)
    import transformers

    hardware = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
                else f"CPU ({platform.processor() or platform.machine()}, "
                     f"{torch.get_num_threads()} threads)")
    log(f"hashattn-eval: torch {torch.__version__}, transformers {transformers.__version__}, "
        f"device {args.device} ({hardware}), dtype {args.dtype}")
    timings: Dict[str, float] = {}

    t = time.time()
    register()
    model, tok = load_model(args.model, args.device, dtype)
    model.set_attn_implementation(ATTN_NAME)
    timings["model load"] = time.time() - t
    cfg = model.config
    log(f"model: {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} q heads, "
        f"{cfg.num_key_value_heads} kv heads, loaded in {timings['model load']:.1f} s")

    STATE.seed = args.seed
    STATE.row_chunk = args.row_chunk
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    STATE.srp = sel.srp_planes(cfg.num_hidden_layers, cfg.num_key_value_heads, D,
                               seed=args.seed).to(args.device)
    weights = {}
    weight_files: Dict[str, str] = {}  # hash method -> the file it uses
    methods = []
    for name in args.methods:
        m = Method(name)
        if name.startswith("hash-"):
            m.compact = "compact" in name
            m.group = name.endswith("group")
            path = weights_for(name, args.weights_paper, args.weights_paper_head, args.weights_compact)
            weight_files[name] = path
            if path not in weights:
                wq, wk, meta = load_hash_weights(path, args.device)
                want = "per_kv_head" if m.compact else "per_query_head"
                if meta.get("signature_layout") != want:
                    raise SystemExit(f"hashattn-eval: {path} has signature_layout "
                                     f"{meta.get('signature_layout')}, expected {want}")
                weights[path] = {"query": wq, "key": wk}
            m.weights = weights[path]
        methods.append(m)

    report: Dict[str, Any] = {
        "tool": "hashattn-eval", "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "hardware": hardware, "torch": torch.__version__,
        "transformers": transformers.__version__,
        "config": {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
                   for k, v in vars(args).items()},
        "methods": {m: DESCRIBE[m] for m in ["dense"] + args.methods},
        "weights": weight_files,
        "budget_rule": "row at position t sees n = t + 1 tokens and attends to T(n) = sink + "
                       "recent + floor(n / sparsity) of them (all when n <= T(n)); selecting "
                       "methods keep sink [0, I) and recent [n - R, n) and choose floor(n / "
                       "sparsity) candidates in [I, n - R); streaming keeps [0, I) and the "
                       "last R + floor(n / sparsity)",
        "timings": timings,
    }
    failed = False
    if not args.no_quality:
        t = time.time()
        text_dir = find_text_dir(args.text_dir)
        windows = make_windows(tok, text_dir, args.windows, args.context + 1, args.seed)
        log(f"quality: {len(windows)} window(s) of {args.context} tokens from {text_dir}, last "
            f"{args.decode} decoded; methods {', '.join(args.methods)}; sparsity "
            f"{', '.join(f'{s:g}x' for s in args.sparsity)}")
        qdead = start + args.quality_deadline if args.quality_deadline > 0 else deadline
        report["quality"] = run_quality(model, windows, methods, args.fractions, args,
                                        min(qdead, deadline))
        timings["quality"] = time.time() - t
        if args.crosscheck != "off" and STATE.captured:
            t = time.time()
            report["crosscheck"] = crosscheck(args, methods)
            timings["crosscheck"] = time.time() - t
            if report["crosscheck"]["status"] == "FAILED" or (
                    args.crosscheck == "on" and report["crosscheck"]["status"] == "skipped"):
                failed = True
            if report["crosscheck"]["status"] == "skipped":
                log(f"crosscheck: {report['crosscheck']['why']}")
    if not args.no_passkey:
        t = time.time()
        report["passkey"] = run_passkey(model, tok, methods, args.fractions, args, deadline)
        timings["passkey"] = time.time() - t
    timings["total"] = time.time() - start
    report["targets"] = targets(report)
    md = markdown(report)
    log("")
    log(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "quality.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(args.out, "quality.md"), "w") as f:
            f.write(md)
        log(f"wrote {os.path.join(args.out, 'quality.json')} and quality.md")
    log(f"hashattn-eval: {timings['total']:.1f} s " + ("FAILED" if failed else "OK"))
    return 1 if failed else 0
