#!/usr/bin/env python3
"""prefill.py - the CUDA backend's prefill against torch SDPA (flash), same process.

  HASHATTN_LIBRARY=build/libhashattn.so.1 python3 bench/prefill.py [--json out.json]
      [--md out.md] [--reps 15]

For each shape, random bf16 queries and a paged NHD cache (block 16, pages in
random order) go through Context.prefill (the library through the Python
adapter); the anchor is scaled_dot_product_attention with the flash backend,
is_causal, on the same numbers laid out contiguously ([B, H, n, D]), for the
shapes where every sequence is prefilled from its start (flash's causal mask
is aligned to the top left, so a chunk after a cached prefix has no anchor).
Times: CUDA events around 4 back-to-back calls (the Python call's own cost
hides behind the GPU's work), median of --reps; TFLOP/s counts the causal
products actually needed (4 x Hq x D per query-key pair). The first line of
output names the library; the last line ends in OK when every shape ran and
our output matched SDPA's within bf16 tolerance.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python"))

# (label, B, prefix tokens cached before the chunk, chunk rows, Hq, Hkv, D)
SHAPES = [
    ("issue B=1 n=4K", 1, 0, 4096, 32, 8, 128),
    ("issue B=1 n=16K", 1, 0, 16384, 32, 8, 128),
    ("issue B=1 n=32K", 1, 0, 32768, 32, 8, 128),
    ("issue B=8 n=4K", 8, 0, 4096, 32, 8, 128),
    ("issue B=1 chunk 2K after 30K", 1, 30720, 2048, 32, 8, 128),
    ("issue B=8 chunk 512 after 8K", 8, 8192, 512, 32, 8, 128),
    ("smollm2 B=32 n=2K", 32, 0, 2048, 9, 3, 64),
    ("smollm2 B=4 n=8K", 4, 0, 8192, 9, 3, 64),
]
CALLS = 4
BLOCK = 16


def time_ms(torch, fn, reps):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        for _ in range(CALLS):
            fn()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) / CALLS)
    ts.sort()
    return ts[len(ts) // 2]


def run_shape(torch, hashattn, shape, reps):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    label, B, prefix, rows, hq, hkv, d = shape
    n = prefix + rows
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(1234)
    blocks_per_seq = (n + BLOCK - 1) // BLOCK
    num_blocks = B * blocks_per_seq
    k_seq = torch.randn(B, n, hkv, d, device=dev, generator=g).to(torch.bfloat16)
    v_seq = torch.randn(B, n, hkv, d, device=dev, generator=g).to(torch.bfloat16)
    q = torch.randn(B, rows, hq, d, device=dev, generator=g).to(torch.bfloat16)
    # pages in random order: sequence b's block j is page perm[b * blocks_per_seq + j]
    perm = torch.randperm(num_blocks, device=dev, generator=g).to(torch.int32)
    tables = perm.view(B, blocks_per_seq).contiguous()
    pad = blocks_per_seq * BLOCK - n
    kp = torch.nn.functional.pad(k_seq, (0, 0, 0, 0, 0, pad)).view(B * blocks_per_seq, BLOCK, hkv, d)
    vp = torch.nn.functional.pad(v_seq, (0, 0, 0, 0, 0, pad)).view(B * blocks_per_seq, BLOCK, hkv, d)
    kc = torch.empty_like(kp)
    vc = torch.empty_like(vp)
    kc[perm.long()] = kp
    vc[perm.long()] = vp
    seq_lens = torch.full((B,), n, dtype=torch.int32, device=dev)
    qsl = (torch.arange(B + 1, dtype=torch.int32, device=dev) * rows).contiguous()
    query = q.reshape(B * rows, hq, d).contiguous()
    out = torch.empty_like(query)
    ctx = hashattn.Context(1, hq, hkv, d, block_size=BLOCK, dtype="bfloat16", device="cuda:0")
    ws_bytes = ctx.workspace_size("prefill", max_num_seqs=B, max_num_tokens=B * rows,
                                  max_blocks_per_seq=blocks_per_seq)
    ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device=dev)

    def ours():
        ctx.prefill(0, query, kc, vc, tables, seq_lens, qsl, output=out, workspace=ws)

    ms = time_ms(torch, ours, reps)
    pairs = B * (rows * prefix + rows * (rows + 1) // 2)
    flops = 4.0 * hq * d * pairs
    row = {"label": label, "B": B, "prefix": prefix, "rows": rows, "Hq": hq, "Hkv": hkv, "D": d,
           "ours_ms": ms, "ours_tflops": flops / ms / 1e9}
    if prefix == 0:
        qt = q.transpose(1, 2).contiguous()
        kt = k_seq.transpose(1, 2).contiguous()
        vt = v_seq.transpose(1, 2).contiguous()
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            def anchor():
                return F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)

            sms = time_ms(torch, anchor, reps)
            ref = anchor().transpose(1, 2).reshape(B * rows, hq, d).float()
        ours()
        torch.cuda.synchronize()
        err = (out.float() - ref).abs().max().item()
        row.update({"sdpa_ms": sms, "sdpa_tflops": flops / sms / 1e9, "ratio": sms / ms, "max_abs_diff": err})
    ctx.close()
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--md")
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args()
    import torch
    import hashattn

    print(f"library: {os.environ.get('HASHATTN_LIBRARY', '(default)')}  gpu: {torch.cuda.get_device_name()}")
    rows = []
    ok = True
    for shape in SHAPES:
        r = run_shape(torch, hashattn, shape, args.reps)
        if "max_abs_diff" in r and not r["max_abs_diff"] < 0.05:
            ok = False
        rows.append(r)
        torch.cuda.empty_cache()
    lines = ["| shape | ours ms | ours TFLOP/s | SDPA ms | SDPA TFLOP/s | SDPA / ours | max abs diff |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "sdpa_ms" in r:
            lines.append(f"| {r['label']} | {r['ours_ms']:.3f} | {r['ours_tflops']:.1f} | {r['sdpa_ms']:.3f} | "
                         f"{r['sdpa_tflops']:.1f} | {r['ratio']:.2f}x | {r['max_abs_diff']:.4f} |")
        else:
            lines.append(f"| {r['label']} | {r['ours_ms']:.3f} | {r['ours_tflops']:.1f} | - | - | - | - |")
    table = "\n".join(lines)
    print(table)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "library": os.environ.get("HASHATTN_LIBRARY", ""), "calls_per_event": CALLS,
                       "reps": args.reps, "rows": rows}, f, indent=1)
    print(f"prefill bench: {len(rows)} shapes, outputs {'match' if ok else 'DIFFER'}: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
