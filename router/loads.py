"""The loads the request path runs itself, when the routing policy answers LoadThen.

A cold start (nobody holds the adapter) and an overflow (every holder's batch
is full) both load the adapter on a worker the policy chose and then ask the
policy again. Concurrent requests asking for the same (adapter, worker) share
one load; each waits at most what it may (the cold-start timeout) and the load
goes on for the next caller when a waiter gives up. Which worker, in which
order, and what a failure means are router.core.routing's business.
"""

from __future__ import annotations

import asyncio
import logging

from router.core.events import LoadFinished
from router.core.fleetstate import FleetState
from router.metrics import RouterMetrics
from router.workers import AdapterRejected, WorkerCallFailed, WorkerClient

log = logging.getLogger(__name__)


class Loader:
    def __init__(self, state: FleetState, client: WorkerClient, metrics: RouterMetrics) -> None:
        self._state = state
        self._client = client
        self._metrics = metrics
        self._loads: dict[tuple[str, str], asyncio.Task[bool]] = {}

    async def load(self, adapter: str, worker: str, wait_s: float, *, cold: bool) -> bool:
        """Whether `worker` holds `adapter` once its load ends; raises TimeoutError after `wait_s` (the load
        goes on). A cold start's outcome is counted once per load, however many requests wait on it."""
        key = (adapter, worker)
        task = self._loads.get(key)
        if task is None:
            task = asyncio.create_task(self._load(adapter, worker, wait_s, cold), name=f"load:{adapter}@{worker}")
            self._loads[key] = task
            task.add_done_callback(lambda _t: self._loads.pop(key, None))
        async with asyncio.timeout(wait_s):
            return await asyncio.shield(task)

    async def _load(self, adapter: str, worker: str, wait_s: float, cold: bool) -> bool:
        record = self._state.catalog.get(adapter)
        view = self._state.workers.get(worker)
        if record is None or view is None:
            return False
        try:
            await self._client.load(view.url, record, wait_s=wait_s)
        except (WorkerCallFailed, AdapterRejected) as exc:
            log.warning("load of %s on worker %s failed: %s", adapter, worker, exc)
            return False
        self._state.apply(LoadFinished(worker, adapter))
        if cold:
            self._metrics.cold_starts.labels(self._metrics.adapter(adapter), "loaded").inc()
        return True
