"""Deterministic "generated" text: a greedy model over words.

Each token is a function of the model and the whole context before it (the
prompt's words, then the tokens generated so far), folded into a rolling hash.
So the same (model, prompt) always gives the same tokens, different adapters
give different tokens (tests can tell which adapter answered), and, as with a
real model at temperature 0, a request whose prompt is the original prompt plus
the first k tokens of an answer continues that answer token for token: what a
migrated stream must reproduce. The end of an answer (EOS) is a property of the
context too, so a continuation stops where the uninterrupted answer stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import xxhash

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
         "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey",
         "xray", "yankee", "zulu", "amber", "basil", "cedar", "dune", "ember", "fern", "grove", "harbor", "iris",
         "jade", "kelp", "lotus", "maple", "nectar", "onyx", "pearl", "quartz", "reed", "sage", "thyme", "umber",
         "violet", "willow"]
EOS_EVERY = 64
"""One context in this many ends the answer: answers without ignore_eos run 64 tokens on average."""


def context(model: str, words: Iterable[str]) -> int:
    """The state after reading `words` (a prompt's, then an answer's so far)."""
    state = xxhash.xxh64_intdigest(model.encode())
    for word in words:
        state = xxhash.xxh64_intdigest(word.encode(), seed=state)
    return state


def tokens(state: int) -> Iterator[str]:
    """The answer from `state` on, without end: the caller stops at its length."""
    while True:
        word = WORDS[state % len(WORDS)]
        yield word
        state = xxhash.xxh64_intdigest(word.encode(), seed=state)


def natural_length(state: int, max_tokens: int) -> int:
    """Where generation from `state` stops without ignore_eos: the first context after at least one token that
    ends the answer, or `max_tokens`."""
    for n, word in enumerate(tokens(state), start=1):
        if n >= max_tokens:
            return max_tokens
        state = xxhash.xxh64_intdigest(word.encode(), seed=state)
        if (state >> 32) % EOS_EVERY == 0:
            return n
    raise AssertionError("unreachable")


def answer(model: str, prompt: str, n: int) -> str:
    """The text of an answer of `n` tokens to a completion prompt, as a worker streams it (ignore_eos)."""
    return "".join(" " + word for word in itertools.islice(tokens(context(model, prompt.split())), n))


def prompt_tokens(text: str) -> int:
    return max(1, len(text.split()))
