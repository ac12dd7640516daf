"""bad-worker: one worker answers every request seconds late, another answers every request with a 500.

Five workers, every adapter on two of them; after a short warm-up (demand
rises from nothing, and the placement moves with it) each request is counted
under its adapter. Checks: no request fails (a 500 is retried on the other
holder, and the failing worker is ejected by passive health); adapters whose
replica set avoided the slow worker (after the warm-up and at the end) keep a
p99 below the injected delay (the slow worker's queue does not spread to
them); no retry storm: the routers retried at most what the retry budget
allows (its ratio of the requests plus its cap).
"""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec

from bench.chaos.fleet import FleetSpec
from bench.chaos.load import OpenLoop, Outcome
from bench.chaos.observe import loras
from bench.chaos.report import ScenarioResult
from bench.chaos.scenarios.common import (
    Context,
    counters,
    latency_ms,
    request,
    settle,
    settled,
)

NAME = "bad-worker"
NAMES = tuple(f"bw-{i:02d}" for i in range(20))
SLOW, FAILING = 0, 1
WARMUP, WARMUP_S = "warm-up", 3.0
BUDGET_RATIO, BUDGET_CAP = 0.2, 20
"""The router's defaults (control.retry_budget_ratio, RetryBudget.cap)."""


class Sizes(msgspec.Struct, frozen=True):
    rate: float
    seconds: float
    slow_s: float


FULL = Sizes(rate=100, seconds=30, slow_s=3.0)
QUICK = Sizes(rate=50, seconds=15, slow_s=2.0)


async def run(ctx: Context) -> ScenarioResult:
    sizes = QUICK if ctx.quick else FULL
    spec = FleetSpec(workers=5, adapters=NAMES, placement={"defaults": {"min_replicas": 2}},
                     worker_faults={SLOW: ("--slow-s", str(sizes.slow_s)), FAILING: ("--fail-rate", "1.0")})
    result = ScenarioResult(
        name=NAME, load=f"{sizes.rate:g} req/s x {sizes.seconds:g} s over {len(NAMES)} adapters x 2 replicas; "
        "5 workers", faults=f"one worker {sizes.slow_s:g} s slow, one answering 500 to everything")
    async with settled(ctx.root, spec) as (fleet, session):
        router = fleet.routers[0]
        slow_id, failing_id = fleet.workers[SLOW].id, fleet.workers[FAILING].id
        before = await counters(session, fleet.routers)
        load = OpenLoop(session, [router.url], lambda i: request(NAMES[i % len(NAMES)], group=WARMUP), sizes.rate)
        load.start(sizes.seconds, int(sizes.rate * sizes.seconds) + 1)
        await asyncio.sleep(WARMUP_S)  # demand rises from nothing: let the placement follow it first
        await settle(session, fleet)
        at_start = await _replica_sets(session, router.url)
        load.pick = lambda i: request(NAMES[i % len(NAMES)], group=NAMES[i % len(NAMES)])
        tally = await load.finish()
        result.count(tally, await counters(session, fleet.routers) - before)
        at_end = await _replica_sets(session, router.url)
    near = {n for sets in (at_start, at_end) for n, ws in sets.items() if slow_id in ws}
    others = set(NAMES) - near
    others_p99 = tally.percentile(0.99, others)
    allowed = BUDGET_RATIO * tally.sent + BUDGET_CAP
    answers = [(worker, n) for (group, worker), n in tally.served_by.items() if group in near]
    on_slow = sum(n for worker, n in answers if worker == slow_id)
    result.figures = {**latency_ms(tally, others, "others"), **latency_ms(tally, near, "near slow"),
                      "near-slow answers from the slow worker %": round(100 * on_slow
                                                                        / max(1, sum(n for _, n in answers)),
                                                                        1),
                      "adapters near the slow worker": len(near),
                      "of which the other replica is the failing worker": sum(
                          failing_id in at_end[n] for n in near if slow_id in at_end[n]),
                      "replica sets changed after the warm-up": sum(at_start[n] != at_end[n] for n in NAMES),
                      "retries allowed by the budget": allowed}
    result.checks |= {
        "no request failed": tally.count(Outcome.OK) == tally.sent,
        "others' p99 below the injected delay": others_p99 is not None and others_p99 < sizes.slow_s,
        "no retry storm (retries within the budget)": result.retried <= allowed,
    }
    return result



async def _replica_sets(session: aiohttp.ClientSession, router: str) -> dict[str, frozenset[str]]:
    return {n: frozenset(v["replica_set"]) for n, v in (await loras(session, router)).items()}
