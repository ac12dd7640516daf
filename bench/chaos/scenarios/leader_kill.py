"""leader-kill: three routers, the leader SIGKILLed under load, then demand rises on one adapter.

Clients talk to the two followers (a client of the killed router loses its
connection: no router can help that). Checks: one of the followers becomes
the leader; the new leader follows demand (the hot adapter grows to three
replicas, held); no split brain: sampled every 100 ms, never two routers claim
leadership at once, and every placement written to etcd (watched directly)
has a higher epoch than the one before; no request fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import msgspec

from bench.chaos.fleet import FleetSpec, Router
from bench.chaos.load import OpenLoop, Outcome
from bench.chaos.observe import loras, status, time_until
from bench.chaos.report import ScenarioResult
from bench.chaos.scenarios.common import (Context, NotConverged, client, mix, request, retries, running,
                                          settle)
from discovery.etcd import EtcdClient
from discovery.stores import PlacementStore

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
        return all(a < b for a, b in zip(self.epochs, self.epochs[1:]))

    async def placements(self, endpoint: str) -> None:
        client = await EtcdClient.connect([endpoint])
        try:
            async for placement in PlacementStore(client).watch():
                self.epochs.append(placement.epoch)
        finally:
            await client.close()

    async def leadership(self, session: aiohttp.ClientSession, routers: list[Router]) -> None:
        while True:
            claims = []
            for router in list(routers):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    if (await status(session, router.url))["is_leader"]:
                        claims.append(router.id)
            self.most_leaders = max(self.most_leaders, len(claims))
            self.leaders_seen.update(claims)
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def watching(session: aiohttp.ClientSession, endpoint: str, routers: list[Router]) -> AsyncIterator[Watch]:
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
    result = ScenarioResult(
        name=NAME, load=f"{sizes.rate:g} req/s over {len(NAMES)} adapters to the followers, then +"
        f"{sizes.hot_rate:g} req/s on one; 3 workers, 3 routers",
        faults=f"SIGKILL the leader at {sizes.before_s:g} s", recovery_of="new leader placed the demand")
    async with running(ctx.root, spec, routers=3) as fleet, client() as session:
        await settle(session, fleet)
        leader = await _leader(session, fleet.routers)
        followers = [r for r in fleet.routers if r is not leader]
        polled = list(fleet.routers)
        async with watching(session, fleet.etcd.endpoint, polled) as watch:
            before = await retries(session, followers)
            budget = 120.0
            steady = OpenLoop(session, [r.url for r in followers], mix(NAMES), sizes.rate).start(
                budget, int(sizes.rate * budget))
            await asyncio.sleep(sizes.before_s)  # the fault's place in the timeline
            leader.proc.kill()
            polled.remove(leader)
            killed = time.monotonic()
            took_over = await time_until(lambda: _one_leader(session, followers), 30)
            hot = OpenLoop(session, [r.url for r in followers], lambda i: request(HOT), sizes.hot_rate).start(
                budget, int(sizes.hot_rate * budget))
            scaled = await time_until(lambda: _scaled(session, followers, 3), 60)
            recovery = None if scaled is None else time.monotonic() - killed
            steady.stop()
            hot.stop()
            tally = (await steady.finish()).merge(await hot.finish())
            result.count(tally, await retries(session, followers) - before)
    result.recovery_s = None if recovery is None else round(recovery, 1)
    result.figures = {"new leader after s": None if took_over is None else round(took_over, 1),
                      "placements written": len(watch.epochs), "most routers claiming leadership": watch.most_leaders}
    result.checks = {
        "a follower took over": took_over is not None,
        "the new leader followed demand (hot adapter on 3 workers)": scaled is not None,
        "never two leaders at once": watch.most_leaders == 1,
        "placement epochs in etcd only ever grew": watch.monotonic and len(watch.epochs) > 1,
        "no request failed": tally.count(Outcome.OK) == tally.sent,
    }
    return result


async def _leader(session: aiohttp.ClientSession, routers: list[Router]) -> Router:
    claims = [r for r in routers if (await status(session, r.url))["is_leader"]]
    if len(claims) != 1:
        raise NotConverged(f"{len(claims)} routers claim leadership before the fault")
    return claims[0]


async def _one_leader(session: aiohttp.ClientSession, routers: list[Router]) -> bool:
    views = [await status(session, r.url) for r in routers]
    leaders = {v["leader"] for v in views}
    return sum(v["is_leader"] for v in views) == 1 and len(leaders) == 1 and leaders <= {r.id for r in routers}


async def _scaled(session: aiohttp.ClientSession, routers: list[Router], replicas: int) -> bool:
    for router in routers:
        view = (await loras(session, router.url))[HOT]
        if len(view["replica_set"]) < replicas or not set(view["replica_set"]) <= set(view["holders"]):
            return False
    return True
