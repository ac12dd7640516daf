"""worker-kill: a worker and its registrar SIGKILLed under steady load (a host crash).

Checks: every non-streaming request succeeds (those in flight on the dead
worker are retried on another holder); every stream completes with its
reference text, none is cut and none hangs (those the crash cut mid-way are
migrated: continued on another holder, no token lost or repeated); within TTL
+ one tick (+1 s for a loaded machine) the placement drops the dead worker and
its adapters are loaded and listed on the others.
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from bench.chaos.fleet import FleetSpec
from bench.chaos.load import OpenLoop, Outcome
from bench.chaos.observe import loras, time_until
from bench.chaos.report import ScenarioResult
from bench.chaos.scenarios.common import (
    Context,
    counters,
    latency_ms,
    mix,
    placement_served,
    settled,
)

NAME = "worker-kill"
SLACK_S = 1.0


class Sizes(msgspec.Struct, frozen=True):
    rate: float
    seconds: float
    workers: int
    adapters: int


FULL = Sizes(rate=200, seconds=30, workers=3, adapters=30)
QUICK = Sizes(rate=100, seconds=15, workers=3, adapters=30)


async def run(ctx: Context) -> ScenarioResult:
    sizes = QUICK if ctx.quick else FULL
    names = tuple(f"wk-{i:02d}" for i in range(sizes.adapters))
    spec = FleetSpec(workers=sizes.workers, adapters=names, placement={"defaults": {"min_replicas": 2}})
    result = ScenarioResult(
        name=NAME, load=f"{sizes.rate:g} req/s x {sizes.seconds:g} s, 1 in 10 streamed; {sizes.workers} workers, "
        f"{sizes.adapters} adapters x 2 replicas",
        faults=f"SIGKILL worker + registrar at {sizes.seconds / 3:g} s", recovery_of="re-replicated")
    async with settled(ctx.root, spec) as (fleet, session):
        router = fleet.routers[0]
        before = await counters(session, fleet.routers)
        load = OpenLoop(session, [router.url], mix(names, stream_every=10), sizes.rate).start(
            sizes.seconds, int(sizes.rate * sizes.seconds) + 1)
        await asyncio.sleep(sizes.seconds / 3)  # the fault's place in the timeline, not a synchronisation
        victim = fleet.workers[0]
        held_there = [n for n, v in (await loras(session, router.url)).items() if victim.id in v["replica_set"]]
        fleet.crash_worker(victim)
        crashed = time.monotonic()
        alive = {w.id for w in fleet.workers if w is not victim}

        async def replaced() -> bool:
            views = (await loras(session, router.url)).values()
            return all(victim.id not in v["replica_set"] and len(v["replica_set"]) == v["replicas"] for v in views)

        placed_s = await time_until(replaced, 30)
        served = await time_until(lambda: placement_served(session, fleet.routers, alive), 30)
        recovery = None if served is None else time.monotonic() - crashed
        tally = await load.finish()
        result.count(tally, await counters(session, fleet.routers) - before)
    bound = spec.ttl_s + spec.tick_s + SLACK_S
    result.recovery_s = None if recovery is None else round(recovery, 1)
    result.figures = {"adapters on the dead worker": len(held_there),
                      "placement without it after s": None if placed_s is None else round(placed_s, 1),
                      "bound TTL + tick + slack s": bound,
                      **latency_ms(tally)}
    result.checks |= {
        "every non-streaming request succeeded": tally.count(Outcome.FAILED, "plain")
        + tally.count(Outcome.HUNG, "plain") == 0,
        "no stream hung or ended without [DONE] or an SSE error event": tally.count(Outcome.FAILED, "stream")
        + tally.count(Outcome.HUNG, "stream") == 0,
        "no stream cut: each one the crash hit migrated": result.cut_streams == 0,
        "dead worker dropped from the placement within TTL + one tick": placed_s is not None and placed_s <= bound,
        "its adapters loaded and listed elsewhere within TTL + one tick": recovery is not None
        and recovery <= bound,
        "the crash hit requests in flight (retried or migrated)": result.retried + result.migrated > 0,
    }
    return result
