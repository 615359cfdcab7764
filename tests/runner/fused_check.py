#!/usr/bin/env python3
"""fused_check: the CUDA runner's fused kernels of small steps
(tools/runner/cuda_fused.cuh) against its unfused path, on the tiny model.

  fused_check.py RUNNER TINY_GGUF

For steps of 1, 7 and 32 rows (--prefill-chunk) and both KV dtypes: every
prompt position's logits with bf16 weights (dense attention: the kernels come
before attention and do not depend on its mode), fused
(the default) and --no-fused, agree within 1% of the largest logit with the
same argmax at 98% of positions or more, and the executor says which path it
took. Needs a CUDA build and a GPU: exit 77 (skipped) otherwise. Ends with
"fused_check: N passed, N failed" and OK or FAILED.
"""
import os
import struct
import subprocess
import sys
import tempfile

# 60+ tokens of the tiny model's byte-level vocabulary: several 32-row steps
PROMPT = "the cat sat on the mat, and the dog sat on the log; 0123456789 abcdefghij ABCDEFGHIJ!"


def read_dump(path):
    with open(path, "rb") as f:
        raw = f.read()
    magic, version, n, v = struct.unpack_from("<4I", raw, 0)
    if magic != 0x474C4148 or version != 1:
        raise ValueError(f"{path}: not a hashattn-run logits dump")
    vals = struct.unpack_from(f"<{n * v}f", raw, 16 + 4 * n)
    return [vals[i * v:(i + 1) * v] for i in range(n)]


def argmax(row):
    return max(range(len(row)), key=lambda i: (row[i], -i))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    runner, model = sys.argv[1], sys.argv[2]
    tmp = tempfile.mkdtemp(prefix="fused-check-")
    pf = os.path.join(tmp, "prompt.txt")
    with open(pf, "w") as f:
        f.write(PROMPT)

    def run(tag, extra):
        path = os.path.join(tmp, tag + ".bin")
        p = subprocess.run([runner, "--model", model, "--device", "cuda", "--weights-dtype", "bf16",
                            "--max-new-tokens", "0", "--dump-logits", path, "--prompt-file", pf, *extra],
                           capture_output=True, text=True, timeout=300)
        if "CUDA devices visible" in p.stderr or "this build has no CUDA" in p.stderr:
            print(f"fused_check: skipped: no GPU or no CUDA build ({p.stderr.strip().splitlines()[-1]})")
            print("fused_check: SKIPPED")
            sys.exit(77)
        if p.returncode != 0:
            raise RuntimeError(f"{tag}: hashattn-run exited {p.returncode}: {p.stderr[-2000:]}")
        return read_dump(path), "fused small steps on" in p.stderr

    npass = nfail = 0
    for kv in ("bf16", "fp16"):
        for chunk in (1, 7, 32):
            name = f"fused(kv={kv},rows={chunk})"
            common = ["--attn", "dense", "--kv-dtype", kv, "--prefill-chunk", str(chunk)]
            fu, on_f = run(name + "-fused", common)
            un, on_u = run(name + "-unfused", common + ["--no-fused"])
            scale = max(abs(x) for row in un for x in row)
            diff = max(abs(a - b) for ra, rb in zip(fu, un) for a, b in zip(ra, rb))
            agree = sum(argmax(a) == argmax(b) for a, b in zip(fu, un)) / len(un)
            ok = on_f and not on_u and len(fu) == len(un) > 32 and diff <= 1e-2 * scale and agree >= 0.98
            npass, nfail = npass + ok, nfail + (not ok)
            print(f"{name}: {'PASS' if ok else 'FAIL'}  {len(un)} positions, fused path "
                  f"{'on' if on_f else 'OFF'} / {'ON' if on_u else 'off'}, max |diff| {diff:.2e} of "
                  f"max |logit| {scale:.2f}, argmax agree {100 * agree:.1f}%")
    print(f"fused_check: {npass} passed, {nfail} failed")
    print("fused_check: OK" if nfail == 0 else "fused_check: FAILED")
    return 0 if nfail == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
