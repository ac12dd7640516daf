"""What the processes counted themselves: the workers' slot swaps, disk reads and busy time, and the
routers' placement moves, read from their Prometheus /metrics after a run.

The client cannot see a swap or a disk read; the simulated engine counts them exactly as the simulator's
engine does (it is the same model), so the live columns are the workers' own numbers, not estimates.
"""

from __future__ import annotations

import aiohttp
import msgspec
import numpy as np

SWAPS = "lora_sim_slot_swaps_total"
LOADS = "lora_sim_adapter_loads_total"
BUSY = "lora_sim_busy_seconds_total"
PLACEMENT_MOVES = "lora_router_placement_moves_total"


class WorkerCounters(msgspec.Struct, kw_only=True):
    slot_swaps: int
    adapter_loads: int
    busy_s: np.ndarray
    """Per worker, modelled seconds (speed applied)."""


def series(text: str, name: str) -> float:
    """The value of an unlabelled series in Prometheus text; 0 when absent (a router that never led)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def _metrics(session: aiohttp.ClientSession, base: str) -> str:
    async with session.get(base + "/metrics") as r:
        r.raise_for_status()
        return await r.text()


async def workers(bases: list[str]) -> WorkerCounters:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        texts = [await _metrics(session, b) for b in bases]
    return WorkerCounters(slot_swaps=int(sum(series(t, SWAPS) for t in texts)),
                          adapter_loads=int(sum(series(t, LOADS) for t in texts)),
                          busy_s=np.array([series(t, BUSY) for t in texts]))


async def placement_moves(bases: list[str]) -> int:
    """Summed over routers: only the leader places, so this is the leader's count."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        return int(sum([series(await _metrics(session, b), PLACEMENT_MOVES) for b in bases]))
