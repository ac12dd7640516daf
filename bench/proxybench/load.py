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


def request_body(stream: bool) -> bytes:
    """16 tokens exactly (`ignore_eos`), so a stream is 16 chunks whatever the simulated text."""
    return json.dumps({"model": ADAPTER, "prompt": "hello", "max_tokens": 16, "ignore_eos": True,
                       "stream": stream}).encode()


def percentile_ms(sorted_s: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted latencies in seconds, in milliseconds."""
    if not sorted_s:
        return float("nan")
    return 1e3 * sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))]
