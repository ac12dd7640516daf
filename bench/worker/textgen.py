"""Deterministic "generated" text: the same (model, prompt) always gives the same tokens, and
different adapters give different tokens, so tests can tell which adapter answered."""

from __future__ import annotations

import xxhash

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
         "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey",
         "xray", "yankee", "zulu", "amber", "basil", "cedar", "dune", "ember", "fern", "grove", "harbor", "iris",
         "jade", "kelp", "lotus", "maple", "nectar", "onyx", "pearl", "quartz", "reed", "sage", "thyme", "umber",
         "violet", "willow"]


def token(model: str, prompt: str, index: int) -> str:
    h = xxhash.xxh64_intdigest(f"{model}\x00{prompt}\x00{index}".encode())
    return WORDS[h % len(WORDS)]


def natural_length(model: str, prompt: str, max_tokens: int) -> int:
    """Where generation would stop without ignore_eos: a stable point in [1, max_tokens]."""
    h = xxhash.xxh64_intdigest(f"{model}\x00{prompt}\x00eos".encode())
    return 1 + h % max(1, max_tokens)


def prompt_tokens(text: str) -> int:
    return max(1, len(text.split()))
