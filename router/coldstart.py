"""First load of an adapter nobody holds: on its first HRW worker, once per adapter per router.

Concurrent first requests share one load (one task per adapter); each waits
at most `timeout_s` and then gets a 503 with Retry-After while the load goes
on for the next caller. Which worker is "first" comes from the allocator's HRW
ranking over eligible workers, so every router picks the same one and the
placement, when it arrives, usually agrees.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from allocator.hrw import rank_workers
from router.errors import ColdStartTimeout, NoWorkerAvailable
from router.fleet import Fleet, WorkerView
from router.metrics import RouterMetrics
from router.workers import AdapterRejected, WorkerCallFailed, WorkerClient

log = logging.getLogger(__name__)


class ColdStarter:
    def __init__(self, fleet: Fleet, client: WorkerClient, metrics: RouterMetrics,
                 timeout_s: Callable[[], float]) -> None:
        self._fleet = fleet
        self._client = client
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._loads: dict[str, asyncio.Task[str]] = {}
        self.loads_started = 0

    def eligible(self, adapter: str) -> list[WorkerView]:
        record = self._fleet.catalog[adapter]
        return [v for v in self._fleet.workers.values()
                if v.healthy and record.base_model in v.record.base_models
                and v.record.max_lora_rank >= record.rank]

    async def ensure_loaded(self, adapter: str) -> None:
        """Return once some worker holds `adapter`; raise 503 if that takes too long."""
        task = self._loads.get(adapter)
        if task is None:
            task = asyncio.create_task(self._load(adapter), name=f"cold-start:{adapter}")
            self._loads[adapter] = task
            task.add_done_callback(lambda _t: self._loads.pop(adapter, None))
        started = time.monotonic()
        timeout = self._timeout_s()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(task)
        except TimeoutError:
            self._metrics.cold_starts.labels(self._metrics.adapter(adapter), "timeout").inc()
            raise ColdStartTimeout(
                f"Adapter '{adapter}' is being loaded; retry shortly.",
                headers={"Retry-After": str(max(1, int(timeout)))}) from None
        finally:
            self._metrics.cold_start_wait.observe(time.monotonic() - started)

    async def _load(self, adapter: str) -> str:
        self.loads_started += 1
        record = self._fleet.catalog[adapter]
        views = {v.id: v for v in self.eligible(adapter)}
        ranked = rank_workers(adapter, [v.record.to_worker() for v in views.values()])
        reasons: list[str] = []
        for worker in ranked:
            view = views[worker.id]
            try:
                await self._client.load(view.url, record)
            except (WorkerCallFailed, AdapterRejected) as exc:
                reasons.append(f"{worker.id}: {exc}")
                continue
            self._fleet.add_holding(worker.id, adapter)
            self._metrics.cold_starts.labels(self._metrics.adapter(adapter), "loaded").inc()
            return worker.id
        self._metrics.cold_starts.labels(self._metrics.adapter(adapter), "failed").inc()
        log.warning("cold start of %s failed on every eligible worker: %s", adapter, "; ".join(reasons) or "none")
        raise NoWorkerAvailable(f"No worker could load adapter '{adapter}'.",
                                headers={"Retry-After": "5"})
