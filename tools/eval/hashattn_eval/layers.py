"""Which layers' selections lose the passkey: a diagnostic for one HashAttention method.

For each passkey context (teacher-forced scoring of evaluate.run_passkey: retrieved when
the argmax at every answer row is the answer token), the method's accuracy
- with its own selection in every layer (as in the evaluation),
- with the oracle top-k in every layer (the ceiling),
- for each layer i, with its own selection in layer i only (the oracle elsewhere): how
  much layer i alone loses,
- for each layer i, with the oracle in layer i only: how much fixing layer i alone
  recovers.
Same budget everywhere (sink + recent + floor(n / sparsity)). Prints a markdown table
and writes JSON.

    tools/eval/hashattn-passkey-layers --model M.gguf --contexts 2048,8192 --out layers.json
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from . import evaluate as ev
from . import passkey as pk
from . import select as sel


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="hashattn-passkey-layers", description=__doc__.split("\n")[0])
    cache = os.environ.get("HASHATTN_CACHE", os.path.expanduser("~/.cache/hashattn"))
    ap.add_argument("--model", default=os.path.join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--method", default="hash-paper-group",
                    choices=[m for m in ev.METHODS if m.startswith("hash-")])
    ap.add_argument("--weights", help="hash weights (default: the shipped file of the method's layout and selection)")
    ap.add_argument("--sparsity", type=float, default=16.0)
    ap.add_argument("--sink", type=int, default=128)
    ap.add_argument("--recent", type=int, default=128)
    ap.add_argument("--contexts", type=ev.parse_list(int), default=[2048, 8192])
    ap.add_argument("--depths", type=ev.parse_list(float), default=[0.1, 0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16, help="prompts per forward pass")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="JSON file")
    args = ap.parse_args(argv)

    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    t0 = time.time()
    ev.register()
    model, tok = ev.load_model(args.model, args.device, torch.float32)
    model.set_attn_implementation(ev.ATTN_NAME)
    L = model.config.num_hidden_layers
    compact = "compact" in args.method
    path = args.weights or ev.weights_for(args.method)
    wq, wk, meta = ev.load_hash_weights(path, args.device)
    want = "per_kv_head" if compact else "per_query_head"
    if meta.get("signature_layout") != want:
        raise SystemExit(f"hashattn-passkey-layers: {path} has signature_layout "
                         f"{meta.get('signature_layout')}, expected {want}")
    method = ev.Method(args.method, {"query": wq, "key": wk}, compact, args.method.endswith("group"))
    budget = sel.Budget(args.sink, args.recent, 1.0 / args.sparsity)
    tokenize = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    everyone = frozenset(range(L))
    report: Dict[str, Any] = {"tool": "hashattn-passkey-layers", "date": time.strftime("%Y-%m-%d %H:%M %Z"),
                              "method": args.method, "weights": path, "sparsity": args.sparsity,
                              "sink": args.sink, "recent": args.recent, "contexts": []}
    ev.log(f"hashattn-passkey-layers: {args.method} at {args.sparsity:g}x, {L} layers, "
           f"model loaded in {time.time() - t0:.1f} s")
    for c in args.contexts:
        prompts = [pk.make_prompt(tokenize, c, d, s) for s in range(args.seeds) for d in args.depths]
        A = prompts[0].answer_len
        ids = torch.tensor([p.ids for p in prompts], device=args.device)
        inp, ans = ids[:, :-1], ids[:, -A:]

        def score(m: ev.Method, oracle_layers: frozenset) -> List[bool]:
            ev.STATE.oracle_layers = oracle_layers
            ok: List[bool] = []
            for s0 in range(0, len(prompts), args.batch):
                ev.STATE.begin(m, budget, A, args.device, 0)
                lp = ev.forward_logits(model, inp[s0:s0 + args.batch], A)
                ok += (lp.argmax(-1) == ans[s0:s0 + args.batch]).all(-1).tolist()
            ev.STATE.oracle_layers = frozenset()
            return ok

        t = time.time()
        dense = score(ev.Method("dense"), frozenset())
        own = score(method, frozenset())
        oracle = score(method, everyone)
        only_hash = [score(method, everyone - {i}) for i in range(L)]
        only_oracle = [score(method, frozenset({i})) for i in range(L)]
        acc = lambda v: float(np.mean(v))  # noqa: E731
        row = {"context": c, "prompts": len(prompts), "dense": acc(dense), "hash_everywhere": acc(own),
               "oracle_everywhere": acc(oracle), "hash_only_in": [acc(v) for v in only_hash],
               "oracle_only_in": [acc(v) for v in only_oracle], "seconds": time.time() - t}
        report["contexts"].append(row)
        print(f"\n{args.method} at {args.sparsity:g}x, context {c}, {len(prompts)} prompts: dense "
              f"{row['dense']:.0%}, hash in every layer {row['hash_everywhere']:.0%}, oracle in every "
              f"layer {row['oracle_everywhere']:.0%} ({row['seconds']:.0f} s)")
        print("| layer | hash in this layer only (oracle elsewhere) | oracle in this layer only (hash elsewhere) |")
        print("|---|---|---|")
        for i in range(L):
            print(f"| {i} | {row['hash_only_in'][i]:.0%} | {row['oracle_only_in'][i]:.0%} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    return 0
