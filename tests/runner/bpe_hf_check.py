#!/usr/bin/env python3
"""Compare the runner's byte-level BPE (tools/runner/tokenizer.c) with the
Hugging Face `tokenizers` library, both on the vocabulary and merges of the
real SmolLM2 GGUF: the same token ids for seeded random strings over a pool of
awkward pieces (contractions, runs of spaces and newlines, digits and other
numbers, several scripts, combining marks, emoji, common English and code
fragments) and for this repository's own text (docs/, README, C sources) in
3,000-character chunks. Special tokens are not parsed on either side.

    bpe_hf_check.py PATH/TO/tok_dump [CASES] [SEED]

The reference is built from the file's tables: a BPE model over its tokens and
merges, and its pre-tokenizer (pre = smollm: each digit alone, then the
GPT-2 byte-level split; gpt2: the split alone). Exit 0 when every encoding
matches, 1 on a mismatch, 77 (CTest's skip) without `tokenizers` (scripts/deps
installs it into .pydeps/) or without the model (scripts/fetch-model;
HASHATTN_MODEL, HASHATTN_CACHE).
"""
import glob
import os
import random
import subprocess
import sys

NAME = "bpe_hf_check"


def skip(why):
    print(f"{NAME}: {why}")
    print(f"{NAME}: 0 passed, 0 failed, 1 skipped")
    print(f"{NAME}: SKIPPED")
    sys.exit(77)


try:
    from tokenizers import Tokenizer, models, pre_tokenizers
except ImportError:
    skip("the tokenizers module is not installed (scripts/deps puts it in .pydeps/)")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
POOL = list("abcXYZ019 '\t\n\r.,!?-_()\"") + [
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "  ", "   ", "\n\n",
    "é", "Ü", "ß", "ж", "λ", "日", "本", "語", "한", "ا", "٣", "²", "½", "Ⅻ", "\u00a0", "\u2003",
    "\u3000", "\u0301", "😀", "€", "—", "…", "\u200b", "\u0085", "ǅ", "ʰ",
    "the", "ing", "tion", " and", " of", "def ", "return", "    ", "http", "://", ".com",
    "Hello", "World", "über", "naïve", "1999", "3.14", "<|im_start|>", "{{", "}}"]


def model_path():
    path = os.environ.get("HASHATTN_MODEL")
    if not path:
        cache = os.environ.get("HASHATTN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hashattn")
        path = os.path.join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path


def reference(dump, model):
    parts = subprocess.run([dump, "vocab", model], capture_output=True, check=True).stdout.split(b"\0")
    pre, rest = parts[0].decode(), parts[1:]
    cut = rest.index(b"")
    tokens = [t.decode() for t in rest[:cut]]
    merges = [tuple(m.decode().split(" ", 1)) for m in rest[cut + 1:] if m]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    split = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if pre == "smollm":
        split.insert(0, pre_tokenizers.Digits(individual_digits=True))
    elif pre not in ("gpt2", "default"):
        raise SystemExit(f"{NAME}: pre-tokenizer '{pre}' has no reference here: FAILED")
    tk.pre_tokenizer = pre_tokenizers.Sequence(split)
    return tk, tokens, pre


def repo_texts():
    files = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")) + [os.path.join(ROOT, "README.md")] +
                   glob.glob(os.path.join(ROOT, "tools", "runner", "*.c")))
    texts = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            s = fh.read()
        texts += [s[i:i + 3000] for i in range(0, len(s), 3000)]
    return texts


def main():
    dump = sys.argv[1]
    cases = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    model = model_path()
    if not os.path.exists(model):
        skip(f"no model at {model} (scripts/fetch-model)")
    tk, tokens, pre = reference(dump, model)
    rng = random.Random(seed)
    sets = {"random": ["".join(rng.choice(POOL) for _ in range(rng.randint(1, 40))) for _ in range(cases)],
            "repository text": repo_texts()}
    passed = failed = 0
    for label, texts in sets.items():
        out = subprocess.run([dump, "encode", model], input=b"\0".join(t.encode() for t in texts),
                             capture_output=True, check=True).stdout.decode().split("\n")
        bad = 0
        for text, line in zip(texts, out):
            ours = [int(x) for x in line.split()]
            ref = tk.encode(text, add_special_tokens=False).ids
            if ours != ref:
                bad += 1
                if bad <= 3:
                    print(f"  mismatch on {text[:80]!r}:")
                    print(f"    ours {[tokens[i] for i in ours][:24]}")
                    print(f"    ref  {[tokens[i] for i in ref][:24]}")
        chars = sum(len(t) for t in texts)
        print(f"  {label}: {len(texts)} texts, {chars} characters, {len(texts) - bad} encoded alike, "
              f"{bad} not (pre-tokenizer {pre}, {len(tokens)} tokens, seed {seed})")
        passed += len(texts) - bad
        failed += bad
    print(f"{NAME}: {passed} passed, {failed} failed")
    print(f"{NAME}: {'OK' if failed == 0 else 'FAILED'}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
