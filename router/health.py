"""Bringing workers back: a worker the request path took out of rotation is probed until /health answers."""

from __future__ import annotations

import asyncio
import time

from router.core.events import ProbeFailed, ProbeOk
from router.runtime import RouterRuntime


async def probe_down_workers(rt: RouterRuntime) -> None:
    """Runs forever; each pass probes the down workers whose probe time has come, concurrently."""
    while True:
        now = time.monotonic()
        due = [v.id for v in rt.state.workers.values() if not v.healthy and v.probe_at <= now]
        if due:
            urls = [rt.state.workers[w].url for w in due]
            results = await asyncio.gather(*(rt.workers.healthy(url) for url in urls))
            for worker, ok in zip(due, results, strict=True):
                if not ok:
                    rt.state.apply(ProbeFailed(worker, time.monotonic()))
                elif rt.state.apply(ProbeOk(worker)).changed:
                    rt.metrics.worker_healthy.labels(worker).set(1)
        await asyncio.sleep(min(rt.config.control.health_probe_s, 0.5))
