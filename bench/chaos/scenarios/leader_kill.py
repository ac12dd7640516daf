"""leader-kill: three routers; the leader is paused past its lease, resumed, then the next leader SIGKILLed.

The pause (SIGSTOP for TTL + 2 s) is the classic split-brain case: the old
leader wakes up believing it still leads. Clients talk only to routers not
being faulted (a client of a killed router loses its connection: no router can
help that). Checks: another router leads during the pause and the paused one
steps down when it resumes; after the kill a survivor takes over and follows
demand (the hot adapter grows to three held replicas); no split brain: asked
all at once ten times a second, never two routers claim leadership, and every
placement etcd stored (watched directly) has a higher epoch than the one
before; no request fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from itertools import pairwise

import aiohttp
import msgspec

from bench.chaos.fleet import FleetSpec
from bench.chaos.load import OpenLoop, Outcome
from bench.chaos.observe import loras, status, time_until
from bench.chaos.report import ScenarioResult
from bench.chaos.scenarios.common import (
    Context,
    NotConverged,
    counters,
    mix,
    quiet,
    request,
    settled,
)
from discovery.etcd import EtcdClient
from discovery.stores import PlacementStore
from router.localfleet import LocalRouter

NAME = "leader-kill"
NAMES = tuple(f"lk-{i:02d}" for i in range(10))
HOT = NAMES[0]
PER_REPLICA_RPS = 4.0


class Sizes(msgspec.Struct, frozen=True):
    rate: float
    hot_rate: float
    before_s: float


FULL = Sizes(rate=40, hot_rate=16, before_s=5)
QUICK = Sizes(rate=20, hot_rate=16, before_s=3)


class Watch:
    """What the scenario sees of leadership: every placement epoch etcd stored, and overlapping leaders."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.most_leaders = 0
        self.leaders_seen: set[str] = set()

    @property
    def monotonic(self) -> bool:
        return all(a < b for a, b in pairwise(self.epochs))

    async def placements(self, endpoint: str) -> None:
        client = await EtcdClient.connect([endpoint])
        try:
            async for placement in PlacementStore(client).watch():
                self.epochs.append(placement.epoch)
        finally:
            await client.close()

    async def leadership(self, session: aiohttp.ClientSession, routers: list[LocalRouter]) -> None:
        """Ask every router at once, 10 times a second; a router that does not answer at once claims nothing."""
        while True:
            answers = await asyncio.gather(*(_claims(session, r) for r in list(routers)))
            claims = {r for r in answers if r is not None}
            self.most_leaders = max(self.most_leaders, len(claims))
            self.leaders_seen.update(claims)
            await asyncio.sleep(0.1)


async def _claims(session: aiohttp.ClientSession, router: LocalRouter) -> str | None:
    """The router's id if it says it leads; None if it does not, or does not answer within 0.5 s (paused)."""
    try:
        async with asyncio.timeout(0.5):
            return router.id if (await status(session, router.url))["is_leader"] else None
    except (aiohttp.ClientError, TimeoutError):
        return None


@contextlib.asynccontextmanager
async def watching(session: aiohttp.ClientSession, endpoint: str, routers: list[LocalRouter]) -> AsyncIterator[Watch]:
    watch = Watch()
    tasks = [asyncio.create_task(watch.placements(endpoint)), asyncio.create_task(watch.leadership(session, routers))]
    try:
        yield watch
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run(ctx: Context) -> ScenarioResult:
    sizes = QUICK if ctx.quick else FULL
    placement = {"defaults": {"per_replica_rps": PER_REPLICA_RPS, "per_replica_concurrent": None,
                              "scale_down_cooldown_s": 60.0}}
    spec = FleetSpec(workers=3, adapters=NAMES, placement=placement)
    pause_s = spec.ttl_s + 2.0
    result = ScenarioResult(
        name=NAME, load=f"{sizes.rate:g} req/s over {len(NAMES)} adapters to non-faulted routers, then +"
        f"{sizes.hot_rate:g} req/s on one; 3 workers, 3 routers",
        faults=f"leader SIGSTOPped for {pause_s:g} s (TTL + 2 s) and resumed; then the new leader SIGKILLed",
        recovery_of="kill to demand placed by the next leader")
    async with settled(ctx.root, spec, routers=3) as (fleet, session):
        paused = await _leader(session, fleet.routers)
        others = [r for r in fleet.routers if r is not paused]
        polled = list(fleet.routers)
        async with watching(session, fleet.etcd.endpoint, polled) as watch:
            before = await counters(session, others)
            budget = 120.0
            steady = OpenLoop(session, [r.url for r in others], mix(NAMES), sizes.rate).start(
                budget, int(sizes.rate * budget))
            await asyncio.sleep(sizes.before_s)  # the faults' places in the timeline
            fleet.pause(paused)
            await asyncio.sleep(pause_s)
            replaced = await time_until(lambda: _one_leader(session, others), 30)
            fleet.resume(paused)
            stepped_down = await time_until(lambda: _one_leader(session, fleet.routers), 30)
            killed = await _leader(session, fleet.routers)
            survivors = [r for r in fleet.routers if r is not killed]
            steady.targets = [r.url for r in survivors]
            await time_until(lambda: quiet(session, killed.url), 10)  # its clients' requests answered first
            killed.proc.kill()
            polled.remove(killed)
            killed_at = time.monotonic()
            took_over = await time_until(lambda: _one_leader(session, survivors), 30)
            hot = OpenLoop(session, [r.url for r in survivors], lambda i: request(HOT), sizes.hot_rate).start(
                budget, int(sizes.hot_rate * budget))
            scaled = await time_until(lambda: _scaled(session, survivors, 3), 60)
            recovery = None if scaled is None else time.monotonic() - killed_at
            steady.stop()
            hot.stop()
            tally = (await steady.finish()).merge(await hot.finish())
            result.count(tally, await counters(session, survivors) - before)
    result.recovery_s = None if recovery is None else round(recovery, 1)
    result.figures = {"new leader after kill s": None if took_over is None else round(took_over, 1),
                      "placements written": len(watch.epochs), "most routers claiming leadership": watch.most_leaders,
                      "leaders seen": len(watch.leaders_seen)}
    result.checks |= {
        "another router led while the leader was paused": replaced is not None,
        "the paused leader stepped down on resuming": stepped_down is not None,
        "a survivor took over after the kill": took_over is not None,
        "the new leader followed demand (hot adapter on 3 workers)": scaled is not None,
        "never two leaders at once": watch.most_leaders == 1,
        "placement epochs in etcd only ever grew": watch.monotonic and len(watch.epochs) > 1,
        "no request failed": tally.count(Outcome.OK) == tally.sent,
    }
    return result


async def _leader(session: aiohttp.ClientSession, routers: list[LocalRouter]) -> LocalRouter:
    claims = [r for r in routers if (await status(session, r.url))["is_leader"]]
    if len(claims) != 1:
        raise NotConverged(f"{len(claims)} routers claim leadership before the fault")
    return claims[0]


async def _one_leader(session: aiohttp.ClientSession, routers: list[LocalRouter]) -> bool:
    views = [await status(session, r.url) for r in routers]
    leaders = {v["leader"] for v in views}
    return sum(v["is_leader"] for v in views) == 1 and len(leaders) == 1 and leaders <= {r.id for r in routers}


async def _scaled(session: aiohttp.ClientSession, routers: list[LocalRouter], replicas: int) -> bool:
    for router in routers:
        view = (await loras(session, router.url))[HOT]
        if len(view["replica_set"]) < replicas or not set(view["replica_set"]) <= set(view["holders"]):
            return False
    return True
