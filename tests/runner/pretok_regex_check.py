#!/usr/bin/env python3
"""Compare the runner's hand-written pre-tokenizer (tools/runner/tokenizer.c)
with the regular expressions it implements, run by the `regex` module
(Debian python3-regex), on seeded random strings over a pool of awkward
characters: contractions, runs of spaces, tabs and newlines, digits and
other numbers, letters of several scripts, NBSP and other Unicode spaces,
combining marks, emoji.

    pretok_regex_check.py PATH/TO/tok_dump [CASES] [SEED]

Exit 0 when every split matches, 1 on a mismatch, 77 when `regex` is not
installed (CTest's skip code).
"""
import random
import subprocess
import sys

try:
    import regex
except ImportError:
    print("pretok_regex_check: the regex module is not installed (apt-get install python3-regex)")
    print("pretok_regex_check: 0 passed, 0 failed, 1 skipped")
    print("pretok_regex_check: SKIPPED")
    sys.exit(77)

# llama.cpp's pre-tokenizer for pre = "smollm": \p{N} first, then GPT-2's
# split (its unmatched remainders are pieces too, which the final \s+ covers)
GPT2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
DIGIT = regex.compile(r"\p{N}")
POOL = list("abcXYZ019 '\t\n\r.,!?-_()\"") + [
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "  ", "   ", "\n\n",
    "é", "Ü", "ß", "ж", "λ", "日", "本", "語", "한", "ا", "٣", "²", "½", "Ⅻ", "\u00a0", "\u2003",
    "\u3000", "\u0301", "😀", "€", "—", "…", "\u200b", "\u0085", "ǅ", "ʰ"]


def reference(text, mode):
    segments = [text]
    if mode == "smollm":
        segments, pos = [], 0
        for m in DIGIT.finditer(text):
            if m.start() > pos:
                segments.append(text[pos:m.start()])
            segments.append(m.group())
            pos = m.end()
        if pos < len(text):
            segments.append(text[pos:])
    return [m.group() for s in segments for m in GPT2.finditer(s)]


def main():
    dump = sys.argv[1]
    cases = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    passed = failed = 0
    for mode in ("smollm", "gpt2"):
        rng = random.Random(seed)
        texts = ["".join(rng.choice(POOL) for _ in range(rng.randint(1, 30))) for _ in range(cases)]
        out = subprocess.run([dump, mode], input=b"\0".join(t.encode() for t in texts),
                             capture_output=True, check=True).stdout.decode().split("\n")
        bad = 0
        for text, line in zip(texts, out):
            raw = text.encode()
            got = [raw[int(o):int(o) + int(n)].decode() for o, n in (p.split(":") for p in line.split())]
            want = reference(text, mode)
            if got != want:
                bad += 1
                if bad <= 5:
                    print(f"  MISMATCH {mode} {text!r}: got {got}, want {want}")
        print(f"pretokenize(mode={mode}, seed={seed}, cases={cases}): {bad} mismatches")
        passed += bad == 0
        failed += bad != 0
    print(f"pretok_regex_check: {passed} passed, {failed} failed, 0 skipped")
    print(f"pretok_regex_check: {'FAILED' if failed else 'OK'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
