"""What the processes counted themselves: the workers' slot swaps, disk reads, busy time and prefix-cache
tokens (vLLM's own prefix_cache_* counters), and the routers' placement moves, read from their
Prometheus /metrics after a run.

The client cannot see a swap or a disk read; the simulated engine counts them exactly as the simulator's
engine does (it is the same model), so the live columns are the workers' own numbers, not estimates.
"""

from __future__ import annotations

import aiohttp
import msgspec
import numpy as np

from bench.promtext import metric_sum

SWAPS = "lora_sim_slot_swaps_total"
LOADS = "lora_sim_adapter_loads_total"
BUSY = "lora_sim_busy_seconds_total"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
PLACEMENT_MOVES = "lora_router_placement_moves_total"


class WorkerCounters(msgspec.Struct, kw_only=True):
    slot_swaps: int
    adapter_loads: int
    busy_s: np.ndarray
    """Per worker, modelled seconds (speed applied)."""
    prefix_queries: int = 0
    prefix_hits: int = 0
    """Prompt tokens looked up in the workers' prefix caches, and those found there."""


async def _metrics(session: aiohttp.ClientSession, base: str) -> str:
    async with session.get(base + "/metrics") as r:
        r.raise_for_status()
        return await r.text()


async def workers(bases: list[str]) -> WorkerCounters:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        texts = [await _metrics(session, b) for b in bases]
    return WorkerCounters(slot_swaps=int(sum(metric_sum(t, SWAPS) for t in texts)),
                          adapter_loads=int(sum(metric_sum(t, LOADS) for t in texts)),
                          busy_s=np.array([metric_sum(t, BUSY) for t in texts]),
                          prefix_queries=int(sum(metric_sum(t, PREFIX_QUERIES) for t in texts)),
                          prefix_hits=int(sum(metric_sum(t, PREFIX_HITS) for t in texts)))


async def placement_moves(bases: list[str]) -> int:
    """Summed over routers: only the leader places, so this is the leader's count."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        return int(sum([metric_sum(await _metrics(session, b), PLACEMENT_MOVES) for b in bases]))
