"""Bringing workers back: a worker the request path took out of rotation is probed until /health answers."""

from __future__ import annotations

import asyncio
import time

from router.core.events import ProbeFailed, ProbeOk
from router.core.fleetstate import FleetState
from router.live import LiveConfig
from router.metrics import RouterMetrics
from router.workers import WorkerClient


async def probe_down_workers(state: FleetState, client: WorkerClient, metrics: RouterMetrics,
                             live: LiveConfig) -> None:
    """Runs forever; each pass probes the down workers whose probe time has come, concurrently."""
    while True:
        now = time.monotonic()
        due = [v.id for v in state.workers.values() if not v.healthy and v.probe_at <= now]
        if due:
            urls = [state.workers[w].url for w in due]
            results = await asyncio.gather(*(client.healthy(url) for url in urls))
            for worker, ok in zip(due, results, strict=True):
                if not ok:
                    state.apply(ProbeFailed(worker, time.monotonic()))
                elif state.apply(ProbeOk(worker)).changed:
                    metrics.worker_healthy.labels(worker).set(1)
        await asyncio.sleep(min(live.config.control.health_probe_s, 0.5))
