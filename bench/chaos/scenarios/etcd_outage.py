"""etcd-outage: etcd SIGKILLed for a while under load, then restarted on the same data.

Two routers share the etcd. Checks: no request for a placed adapter fails
while etcd is gone (routers route on the placement they hold); adapters
first asked for during the outage are still served (cold start on their
first HRW worker, decided locally), each loaded once per router and never
unloaded under its clients while the placement cannot see their demand; after
the restart both routers agree again: the same leader, the same membership,
the same placement epoch, every replica set held, and the cold adapters (still
asked for) placed.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import msgspec

from bench.chaos.fleet import ChaosFleet, FleetSpec
from bench.chaos.load import OpenLoop, Outcome, Request
from bench.chaos.observe import loras, metrics_sum, status, time_until
from bench.chaos.report import ScenarioResult
from bench.chaos.scenarios.common import (
    Context,
    counters,
    latency_ms,
    placement_served,
    request,
    settled,
)

NAME = "etcd-outage"
COLD_STARTS = "lora_router_cold_starts_total"
OPERATIONS = "lora_router_adapter_operations_total"


class Sizes(msgspec.Struct, frozen=True):
    rate: float
    cold_rate: float
    outage_s: float
    before_s: float
    after_s: float


FULL = Sizes(rate=100, cold_rate=10, outage_s=20, before_s=5, after_s=10)
QUICK = Sizes(rate=50, cold_rate=5, outage_s=10, before_s=3, after_s=6)
PLACED = tuple(f"eo-{i:02d}" for i in range(20))
COLD = tuple(f"cold-{i}" for i in range(10))


async def run(ctx: Context) -> ScenarioResult:
    sizes = QUICK if ctx.quick else FULL
    spec = FleetSpec(workers=3, adapters=PLACED + COLD,
                     placement={"defaults": {"min_replicas": 2}, "adapters": {"cold-*": {"min_replicas": 0}}})
    total_s = sizes.before_s + sizes.outage_s + sizes.after_s
    result = ScenarioResult(
        name=NAME, load=f"{sizes.rate:g} req/s x {total_s:g} s over {len(PLACED)} placed adapters, "
        f"+{sizes.cold_rate:g} req/s over {len(COLD)} cold ones from the outage on; 3 workers, 2 routers",
        faults=f"SIGKILL etcd at {sizes.before_s:g} s, restart {sizes.outage_s:g} s later",
        recovery_of="restart to views converged, cold ones placed")
    async with settled(ctx.root, spec, routers=2) as (fleet, session):
        urls = [r.url for r in fleet.routers]
        before = await counters(session, fleet.routers)
        placed = OpenLoop(session, urls, lambda i: request(PLACED[i % len(PLACED)], stream=i % 10 == 0,
                                                           group="placed"), sizes.rate)
        placed.start(total_s, int(sizes.rate * total_s) + 1)
        await asyncio.sleep(sizes.before_s)  # the fault's place in the timeline
        fleet.etcd.kill()
        churn_before = await _cold_churn(session, fleet)
        cold = OpenLoop(session, urls, lambda i: Request(COLD[i % len(COLD)], group="cold"), sizes.cold_rate)
        cold_s = sizes.outage_s + sizes.after_s
        cold.start(cold_s, int(sizes.cold_rate * cold_s) + 1)
        await asyncio.sleep(sizes.outage_s)
        churn = {k: v - churn_before[k] for k, v in (await _cold_churn(session, fleet)).items()}
        await asyncio.to_thread(fleet.etcd.start)
        restarted = time.monotonic()
        converged = await time_until(lambda: _agree(session, fleet), 60)
        recovery = None if converged is None else time.monotonic() - restarted
        tally = (await placed.finish()).merge(await cold.finish())
        result.count(tally, await counters(session, fleet.routers) - before)
    result.recovery_s = None if recovery is None else round(recovery, 1)
    result.figures = {**latency_ms(tally, ("placed",), "placed"), **latency_ms(tally, ("cold",), "cold"), **churn}
    failed = {g: tally.count(Outcome.FAILED, g) + tally.count(Outcome.HUNG, g) + tally.count(Outcome.CUT, g)
              for g in ("placed", "cold")}
    result.checks |= {
        "no request for a placed adapter failed": failed["placed"] == 0,
        "cold adapters served during the outage": failed["cold"] == 0 and tally.count(Outcome.OK, "cold") > 0,
        "cold adapters loaded once per router, none unloaded under their clients":
            churn["cold starts in the outage"] <= len(fleet.routers) * len(COLD)
            and churn["unloads in the outage"] == 0,
        "views converged after the restart": recovery is not None,
    }
    return result


async def _cold_churn(session: aiohttp.ClientSession, fleet: ChaosFleet) -> dict[str, float]:
    """Cold starts and unloads so far, over both routers: how often cold adapters were loaded and dropped."""
    urls = [r.url for r in fleet.routers]
    return {"cold starts in the outage": await metrics_sum(session, urls, COLD_STARTS, 'outcome="loaded"'),
            "unloads in the outage": await metrics_sum(session, urls, OPERATIONS, 'op="unload",outcome="ok"')}


async def _agree(session: aiohttp.ClientSession, fleet: ChaosFleet) -> bool:
    """Both routers: one leader, every worker a member, one epoch, every replica set held, and the cold
    adapters' demand seen: each placed on at least one worker."""
    leaders = {(await status(session, r.url))["leader"] for r in fleet.routers}
    if len(leaders) != 1 or None in leaders:
        return False
    for router in fleet.routers:
        views = await loras(session, router.url)
        if any(not views[n]["replica_set"] for n in COLD):
            return False
    return await placement_served(session, fleet.routers, {w.id for w in fleet.workers})
