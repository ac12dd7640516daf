"""soak: mixed load for minutes while workers restart and adapters come and go; the router must stay flat.

Flat means: measured at two quiet moments (no request in flight), one after a
warm-up and one after the soak, the router process's RSS grew by at most
max(16 MiB, 10 %) and its event loop's tasks (`lora_router_asyncio_tasks`)
besides one per open client connection (aiohttp keeps a task for each, idle
keep-alives too) by at most 5; its open file descriptors other than established connections (see
`observe.fds_besides_connections`), sampled every second from the first
quiet moment to the last, did not rise by more than 8 (medians of the first
and last thirds, see `rise`). All open
descriptors are not compared: even at a quiet moment they hold the pooled
keep-alive connections (the load client's to the router, the router's to each
worker), whose number follows the recent peak of concurrency, so two snapshots
differed by 11 (33 -> 44) on a busy machine while nothing leaked. Also: no
non-streaming request fails, no stream hangs and none is cut (a restart cuts
streams; they migrate to another holder and end with their reference text).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Sequence

import aiohttp
import msgspec

from bench.chaos.fleet import ChaosFleet, FleetSpec
from bench.chaos.load import OpenLoop, Outcome
from bench.chaos.observe import Usage, fds_besides_connections, loras, time_until, usage
from bench.chaos.report import ScenarioResult
from bench.chaos.scenarios.common import (
    Context,
    counters,
    mix,
    quiet,
    request,
    settle,
    settled,
)
from router.localfleet import make_adapter_dir

NAME = "soak"
NAMES = tuple(f"sk-{i:02d}" for i in range(16))
RSS_GROWTH_MIB, RSS_GROWTH_SHARE, FD_GROWTH, TASK_GROWTH = 16.0, 0.10, 8, 5
FD_SAMPLE_S = 1.0
CHURN_REQUESTS = 5


class Sizes(msgspec.Struct, frozen=True):
    rate: float
    warmup_s: float
    churn_s: float
    sample_s: float


FULL = Sizes(rate=40, warmup_s=20, churn_s=20, sample_s=10)
QUICK = Sizes(rate=25, warmup_s=10, churn_s=8, sample_s=5)


async def run(ctx: Context) -> ScenarioResult:
    sizes = QUICK if ctx.quick else FULL
    seconds = ctx.soak_minutes * 60
    spec = FleetSpec(workers=3, adapters=NAMES, placement={"defaults": {"min_replicas": 2}})
    result = ScenarioResult(
        name=NAME, load=f"{sizes.rate:g} req/s x {seconds:g} s over {len(NAMES)} adapters, 1 in 10 streamed; "
        "3 workers", faults=f"every {sizes.churn_s:g} s in turn: a worker SIGKILLed and restarted, "
        "an adapter added, used and deleted")
    async with settled(ctx.root, spec) as (fleet, session):
        router = fleet.routers[0]
        started = time.monotonic()
        warm = OpenLoop(session, [router.url], mix(NAMES, stream_every=10), sizes.rate)
        tally = await warm.start(sizes.warmup_s, int(sizes.rate * sizes.warmup_s) + 1).finish()
        baseline = await _quiet_usage(session, router.url, router.proc.pid, started)
        before = await counters(session, fleet.routers)
        load = OpenLoop(session, [router.url], mix(NAMES, stream_every=10), sizes.rate).start(
            seconds, int(sizes.rate * seconds) + 1)
        samples: list[Usage] = []
        fds: list[int] = []
        churn = asyncio.create_task(_churn(session, fleet, sizes.churn_s, load))
        fd_sampler = asyncio.create_task(_sample_fds(router.proc.pid, fds))
        try:
            try:
                while not load.finished:
                    samples.append(await usage(session, router.url, router.proc.pid, started))
                    await load.wait(sizes.sample_s)
            finally:
                churn.cancel()
                await asyncio.gather(churn, return_exceptions=True)
            tally.merge(await load.finish())
            await settle(session, fleet)
            end = await _quiet_usage(session, router.url, router.proc.pid, started)
        finally:
            fd_sampler.cancel()
            await asyncio.gather(fd_sampler, return_exceptions=True)
        result.count(tally, await counters(session, fleet.routers) - before)
    samples = [baseline, *samples, end]
    result.usage = samples
    mid = samples[len(samples) // 2]
    rss_allowed = max(RSS_GROWTH_MIB, RSS_GROWTH_SHARE * baseline.rss_mib)
    result.figures = {
        "RSS MiB start": baseline.rss_mib, "RSS MiB mid-soak": mid.rss_mib, "RSS MiB end": end.rss_mib,
        "RSS MiB max": max(s.rss_mib for s in samples),
        "fds start": baseline.fds, "fds end": end.fds, "fds max": max(s.fds for s in samples),
        "fds besides connections: samples": len(fds), "fds besides connections: min": min(fds),
        "fds besides connections: max": max(fds), "fds besides connections: rise": rise(fds),
        "tasks start": baseline.tasks, "tasks end": end.tasks, "tasks max": max(s.tasks for s in samples),
        "client connections start": baseline.clients, "client connections end": end.clients,
        "samples": len(samples)}
    result.checks |= {
        f"RSS flat (grew <= {rss_allowed:.0f} MiB)": end.rss_mib - baseline.rss_mib <= rss_allowed,
        f"open fds besides connections flat (rose <= {FD_GROWTH})": rise(fds) <= FD_GROWTH,
        f"asyncio tasks besides client connections flat (grew <= {TASK_GROWTH})":
            (end.tasks - end.clients) - (baseline.tasks - baseline.clients) <= TASK_GROWTH,
        "every non-streaming request succeeded": tally.count(Outcome.FAILED, "plain")
        + tally.count(Outcome.HUNG, "plain") == 0,
        "no stream hung or ended without [DONE] or an SSE error event": tally.count(Outcome.FAILED, "stream")
        + tally.count(Outcome.HUNG, "stream") == 0,
        "no stream cut: each one a restart hit migrated": result.cut_streams == 0,
    }
    return result


def rise(series: Sequence[float]) -> float:
    """How far a series' level rose: the median of its last third minus the median of its first third.

    A leak grows with time and lifts the last third's median by what leaked over the middle of the run.
    What is open only for a moment (a socket whose peer just closed it, before the event loop closes it
    too; a worker restart's) is a spike that a median ignores: a busy machine delays the event loop and
    makes such spikes larger, not more frequent. Two snapshots would read whatever they happened to hit."""
    third = max(1, len(series) // 3)
    return statistics.median(series[-third:]) - statistics.median(series[:third])


async def _sample_fds(pid: int, into: list[int]) -> None:
    """Until cancelled: the router's descriptors besides connections, every FD_SAMPLE_S (the pace of a
    measurement, not a synchronisation)."""
    while True:
        into.append(fds_besides_connections(pid))
        await asyncio.sleep(FD_SAMPLE_S)


async def _quiet_usage(session: aiohttp.ClientSession, router: str, pid: int, since: float) -> Usage:
    """The router's usage once nothing is in flight through it (so tasks and sockets compare)."""
    await time_until(lambda: quiet(session, router), 30)
    return await usage(session, router, pid, since)


async def _churn(session: aiohttp.ClientSession, fleet: ChaosFleet, every_s: float, load: OpenLoop) -> None:
    """Until cancelled: restart the next worker, then add, use and delete an adapter, in turn."""
    router = fleet.routers[0].url
    for n in itertools.count():
        await asyncio.sleep(every_s)  # the churn's pace, not a synchronisation
        if n % 2 == 0:
            await fleet.restart_worker(fleet.workers[(n // 2) % len(fleet.workers)])
        else:
            await _adapter_round(session, fleet, router, f"churn-{n}", load)


async def _adapter_round(session: aiohttp.ClientSession, fleet: ChaosFleet, router: str, name: str,
                         load: OpenLoop) -> None:
    source = make_adapter_dir(fleet.root / "adapters", name)
    body = {"lora_name": name, "source": {"uri": str(source)}, "base_model": "sim-base"}
    async with session.post(router + "/v1/loras", json=body) as r:
        r.raise_for_status()

    async def known() -> bool:
        return name in await loras(session, router)

    await time_until(known, 10)
    await load.send([request(name) for _ in range(CHURN_REQUESTS)])
    async with session.delete(router + f"/v1/loras/{name}") as r:
        r.raise_for_status()
