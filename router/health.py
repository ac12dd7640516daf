"""Bringing workers back: a worker marked down by the request path is probed until /health answers."""

from __future__ import annotations

import asyncio
import time

from router.runtime import RouterRuntime


async def probe_down_workers(rt: RouterRuntime) -> None:
    """Runs forever; each pass probes the down workers whose probe time has come, concurrently."""
    while True:
        interval = rt.config.control.health_probe_s
        now = time.monotonic()
        due = [v for v in rt.fleet.workers.values() if not v.healthy and v.probe_at <= now]
        if due:
            results = await asyncio.gather(*(rt.workers.healthy(v.url) for v in due))
            for view, ok in zip(due, results):
                if ok:
                    view.healthy = True
                    view.failures = 0
                    rt.metrics.worker_healthy.labels(view.id).set(1)
                else:
                    view.probe_at = time.monotonic() + interval
        await asyncio.sleep(min(interval, 0.5))
