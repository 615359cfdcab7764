"""Passkey retrieval prompts, generated locally (standard library only).

A prompt is an instruction, filler text with one sentence holding a 5-digit key at a
chosen depth, and a question whose answer is the key:

    There is an important piece of information hidden inside a lot of irrelevant text.
    Find it and memorize it. I will quiz you about it.
    <filler> The pass key is 12345. Remember it. 12345 is the pass key. <filler>
    What is the pass key? The pass key is| 12345

The pieces are tokenized separately and their token ids joined, so that a prompt has
exactly the requested number of tokens (prompt + answer = ``context``) whatever the
tokenizer: the filler is cut at a token (its last repetition may be partial). The key
sentence sits at the filler-unit boundary nearest to ``depth`` of the filler. The
score (hashattn-eval) is teacher-forced: the answer's tokens are fed, and a prompt
counts as retrieved when the model's argmax at every answer position is the answer's
token.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, List, Sequence

__all__ = ["FILLER", "INTRO", "QUESTION", "Prompt", "make_key", "make_prompt"]

INTRO = ("There is an important piece of information hidden inside a lot of irrelevant "
         "text. Find it and memorize it. I will quiz you about it.\n")
FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again. ")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\nWhat is the pass key? The pass key is"
ANSWER = " {key}"

Tokenize = Callable[[str], List[int]]


@dataclass
class Prompt:
    ids: List[int]         # prompt tokens followed by the answer tokens (len == context)
    answer_len: int        # the last answer_len ids are the answer
    key: str
    depth: float           # requested depth of the key sentence in the filler
    key_at: int            # token index where the key sentence starts
    seed: int


def make_key(seed: int, context: int, depth: float) -> str:
    """A 5-digit key (10000-99999) determined by (seed, context, depth)."""
    rng = random.Random(f"{seed}/{context}/{depth:.4f}")
    return str(rng.randint(10000, 99999))


def make_prompt(tokenize: Tokenize, context: int, depth: float, seed: int,
                intro_ids: Sequence[int] = ()) -> Prompt:
    """The prompt of ``context`` tokens (answer included) with the key at ``depth``
    (0..1) of the filler. ``intro_ids`` go first (e.g. a BOS token)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth = {depth}; expected 0..1")
    key = make_key(seed, context, depth)
    head = list(intro_ids) + tokenize(INTRO)
    needle = tokenize(NEEDLE.format(key=key))
    question = tokenize(QUESTION)
    answer = tokenize(ANSWER.format(key=key))
    unit = tokenize(FILLER)
    room = context - len(head) - len(needle) - len(question) - len(answer)
    if room < len(unit) or not unit:
        raise ValueError(f"context {context} is too short for a passkey prompt "
                         f"(fixed parts take {context - room} tokens)")
    units = room // len(unit)
    before_units = int(round(depth * units))
    before = unit * before_units
    after_len = room - len(before)
    after = (unit * (after_len // len(unit) + 1))[:after_len]
    ids = head + before + needle + after + question + answer
    assert len(ids) == context, (len(ids), context)
    return Prompt(ids=ids, answer_len=len(answer), key=key, depth=depth,
                  key_at=len(head) + len(before), seed=seed)
