"""Which worker vllm-router's consistent hash sends each adapter to, found by asking it.

Its ring (virtual nodes, its own hash of X-Session-ID) places adapters on other workers than the
simulator's rendezvous hash does, and with a few workers which hot adapters share one decides the
tail. So the simulator's counterpart replays vllm-router's actual map. vllm-router names no worker in
its answers; a one-token request for the base model under the adapter's session id moves only the
busy-time counter of the worker it reached. Run after the measured counters were read.
"""

from __future__ import annotations

import aiohttp

from bench.live import counters
from bench.live.fleet import BASE_MODEL
from bench.live.replay import SESSION_HEADER
from bench.promtext import metric_sum


class RingProbeFailed(RuntimeError):
    """The map could not be read unambiguously."""


async def _busy(session: aiohttp.ClientSession, workers: list[str]) -> list[float]:
    out = []
    for w in workers:
        async with session.get(w + "/metrics") as r:
            out.append(metric_sum(await r.text(), counters.BUSY))
    return out


async def ring_map(front: str, workers: list[str], names: list[str]) -> list[int]:
    """Worker index per adapter. Nothing else may be sending: one probe must move exactly one counter."""
    body = {"model": BASE_MODEL, "prompt": "w", "max_tokens": 1}
    mapping = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        before = await _busy(session, workers)
        for name in names:
            async with session.post(front + "/v1/completions", json=body, headers={SESSION_HEADER: name}) as r:
                await r.read()
            after = await _busy(session, workers)
            moved = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if b > a]
            if len(moved) != 1:
                raise RingProbeFailed(f"a probe for {name} through {front} moved {len(moved)} workers' counters")
            mapping.append(moved[0])
            before = after
    return mapping
