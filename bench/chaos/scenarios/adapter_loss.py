"""adapter-loss: adapters unloaded on a worker behind the routers' back, then another worker restarted.

Every adapter has two replicas, so another holder always exists. Checks: the
unloaded adapters are loaded again, and the restarted worker (same port, same
id, nothing loaded) holds its share again, each within two reconcile periods
(+0.5 s for a loaded machine) of the loss; no client sees a 404 or any other
failure meanwhile (a 404 from a worker that lost the adapter is retried on the
other holder).
"""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec

from bench.chaos.fleet import FleetSpec
from bench.chaos.load import OpenLoop, Outcome
from bench.chaos.observe import loras, time_until, worker_holds
from bench.chaos.report import ScenarioResult
from bench.chaos.scenarios.common import Context, counters, mix, settled
from router.localfleet import LocalWorker

NAME = "adapter-loss"
NAMES = tuple(f"al-{i:02d}" for i in range(12))
UNLOADED = 4
SLACK_S = 0.5


class Sizes(msgspec.Struct, frozen=True):
    rate: float
    phase_s: float


FULL = Sizes(rate=60, phase_s=6)
QUICK = Sizes(rate=30, phase_s=4)


async def run(ctx: Context) -> ScenarioResult:
    sizes = QUICK if ctx.quick else FULL
    spec = FleetSpec(workers=3, adapters=NAMES, placement={"defaults": {"min_replicas": 2}})
    bound = 2 * spec.reconcile_s + SLACK_S
    result = ScenarioResult(
        name=NAME, load=f"{sizes.rate:g} req/s over {len(NAMES)} adapters x 2 replicas; 3 workers",
        faults=f"{UNLOADED} adapters unloaded on one worker at {sizes.phase_s:g} s; another worker SIGKILLed and "
        f"restarted at {2 * sizes.phase_s:g} s", recovery_of="slowest restore")
    async with settled(ctx.root, spec) as (fleet, session):
        router = fleet.routers[0]
        before = await counters(session, fleet.routers)
        seconds = 3 * sizes.phase_s + bound
        load = OpenLoop(session, [router.url], mix(NAMES, stream_every=10), sizes.rate).start(
            seconds, int(sizes.rate * seconds) + 1)
        await asyncio.sleep(sizes.phase_s)  # the faults' places in the timeline
        lossy, restarted = fleet.workers[1], fleet.workers[2]
        lost = sorted(await worker_holds(session, lossy.url))[:UNLOADED]
        for name in lost:
            async with session.post(lossy.url + "/v1/unload_lora_adapter", json={"lora_name": name}) as r:
                r.raise_for_status()
        unloaded = await time_until(lambda: _holds(session, lossy, set(lost)), 15)
        await asyncio.sleep(sizes.phase_s)
        await fleet.restart_worker(restarted)
        reloaded = await time_until(lambda: _holds_share(session, router.url, restarted), 15)
        tally = await load.finish()
        result.count(tally, await counters(session, fleet.routers) - before)
    restores = [s for s in (unloaded, reloaded) if s is not None]
    result.recovery_s = round(max(restores), 1) if len(restores) == 2 else None
    result.figures = {"unloaded adapters back after s": _rounded(unloaded),
                      "restarted worker's share back after s": _rounded(reloaded), "bound s": bound,
                      "404s seen by clients": tally.statuses[404]}
    result.checks |= {
        "unloaded adapters restored within two reconcile periods": unloaded is not None and unloaded <= bound,
        "restarted worker's adapters restored within two reconcile periods": reloaded is not None
        and reloaded <= bound,
        "no client-visible 404": tally.statuses[404] == 0,
        "no request failed": tally.count(Outcome.FAILED) + tally.count(Outcome.HUNG) == 0,
    }
    return result


async def _holds(session: aiohttp.ClientSession, worker: LocalWorker, names: set[str]) -> bool:
    return names <= await worker_holds(session, worker.url)


async def _holds_share(session: aiohttp.ClientSession, router: str, worker: LocalWorker) -> bool:
    """Does `worker` hold what the placement puts on it now?

    Now, not before the restart: a restart slower than the registrar's health
    checks takes the worker out of the fleet for a moment, and the placement it
    rejoins (HRW's share for a fresh worker) need not be the one its history
    had given it.
    """
    share = {n for n, v in (await loras(session, router)).items() if worker.id in v["replica_set"]}
    return bool(share) and share <= await worker_holds(session, worker.url)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)
