"""What every scenario shares: a running fleet, a client session, the request mix, convergence."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from pathlib import Path

import aiohttp
import msgspec

from bench.chaos.fleet import ChaosFleet, FleetSpec
from bench.chaos.load import Request, Tally
from bench.chaos.observe import loras, metrics_sum, status, time_until
from bench.chaos.report import Counters
from router.localfleet import LocalRouter

RETRIES = "lora_router_retries_total"
MIGRATIONS = "lora_router_migrations_total"
STREAM_TOKENS = 200
"""Long enough (at the fleet's speed) that a stream is often mid-way when its worker dies."""


class Context(msgspec.Struct, frozen=True, kw_only=True):
    root: Path
    """An empty directory for this scenario's processes, data and logs."""
    quick: bool = False
    soak_minutes: float = 10.0


@contextlib.asynccontextmanager
async def settled(root: Path, spec: FleetSpec,
                  routers: int = 1) -> AsyncIterator[tuple[ChaosFleet, aiohttp.ClientSession]]:
    """The fleet started and serving its placement, and a client session; everything stopped after."""
    fleet = ChaosFleet(root, spec)
    try:
        await fleet.start(routers)
        async with _client() as session:
            await settle(session, fleet)
            yield fleet, session
    finally:
        fleet.stop()


@contextlib.asynccontextmanager
async def _client() -> AsyncIterator[aiohttp.ClientSession]:
    """No connection cap: an open-loop client must not queue requests behind its own pool."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


def mix(names: Sequence[str], stream_every: int = 0) -> Callable[[int], Request]:
    """Request i: adapter i mod n; every `stream_every`-th request a long stream (0: none).

    Grouped as "stream" or "plain": a stream cut mid-way cannot be retried, a plain request can.
    """
    def pick(i: int) -> Request:
        return request(names[i % len(names)], stream=bool(stream_every) and i % stream_every == 0)
    return pick


def request(model: str, *, stream: bool = False, group: str | None = None) -> Request:
    return Request(model, stream=stream, max_tokens=STREAM_TOKENS if stream else 16,
                   group=group or ("stream" if stream else "plain"))


async def counters(session: aiohttp.ClientSession, routers: Sequence[LocalRouter]) -> Counters:
    urls = [r.url for r in routers]
    return Counters(await metrics_sum(session, urls, RETRIES),
                    await metrics_sum(session, urls, MIGRATIONS, 'outcome="continued"'))


async def placement_served(session: aiohttp.ClientSession, routers: Sequence[LocalRouter],
                           alive: set[str]) -> bool:
    """On every router: the live workers as members, one (written) placement epoch, and each replica set
    made of live workers, all of them holding it."""
    epochs = set()
    for router in routers:
        view = await status(session, router.url)
        if {w["id"] for w in view["workers"]} != alive:
            return False
        epochs.add(view["placement_epoch"])
        for lora in (await loras(session, router.url)).values():
            wanted = set(lora["replica_set"])
            if len(wanted) < lora["replicas"] or not wanted <= alive or not wanted <= set(lora["holders"]):
                return False
    return len(epochs) == 1 and 0 not in epochs


async def quiet(session: aiohttp.ClientSession, router: str) -> bool:
    """Nothing in flight through this router."""
    return sum(w["inflight"] for w in (await status(session, router))["workers"]) == 0


class NotConverged(RuntimeError):
    """The fleet never reached its placement before the fault: the scenario has nothing to measure."""


async def settle(session: aiohttp.ClientSession, fleet: ChaosFleet, timeout_s: float = 60.0) -> None:
    """Until every router serves the placement over every live worker."""
    alive = {w.id for w in fleet.workers}
    if await time_until(lambda: placement_served(session, fleet.routers, alive), timeout_s) is None:
        raise NotConverged(f"placement not served within {timeout_s}s; logs in {fleet.root}")


def latency_ms(tally: Tally, groups: Collection[str] | None = None, label: str = "") -> dict[str, float | None]:
    """p50 and p99 of the successful requests (of these groups), in ms, for a result's figures."""
    prefix = f"{label} " if label else ""
    return {f"{prefix}p{int(q * 100)} ms": None if (v := tally.percentile(q, groups)) is None else round(v * 1000, 1)
            for q in (0.5, 0.99)}
