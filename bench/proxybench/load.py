"""What one load run measured, whichever generator drove it, and the request both generators send."""

from __future__ import annotations

import json

import msgspec

ADAPTER = "bench-lora"
PATH = "/v1/completions"


class LoadResult(msgspec.Struct):
    requests: int
    """Completed responses, any status."""
    errors: int
    """Non-2xx answers and socket errors: a proxy answering errors fast must not look fast."""
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float


LONG_PROMPT_CHARS = 8192
"""The `long` mode's prompt: a chat's system prompt and a few turns of history (about 2k tokens)."""


def request_body(mode: str) -> bytes:
    """16 tokens exactly (`ignore_eos`), so a stream is 16 chunks whatever the simulated text. `plain` and
    `stream` ask with a one-word prompt; `long` (not streamed) with `LONG_PROMPT_CHARS` of text, which a
    prefix-cache-aware router hashes."""
    prompt = ("Summarise the ticket history below. " * (LONG_PROMPT_CHARS // 36 + 1))[:LONG_PROMPT_CHARS] \
        if mode == "long" else "hello"
    return json.dumps({"model": ADAPTER, "prompt": prompt, "max_tokens": 16, "ignore_eos": True,
                       "stream": mode == "stream"}).encode()


def percentile_ms(sorted_s: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted latencies in seconds, in milliseconds."""
    if not sorted_s:
        return float("nan")
    return 1e3 * sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))]
