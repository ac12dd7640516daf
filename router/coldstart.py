"""Loads the request path starts itself: the first load of an adapter nobody holds, and overflow loads.

Cold start: concurrent first requests share one load (one task per adapter);
an adapter marked failed in the catalog (every worker placed for it refused
it, see router.reconcile_plan.failure_marks) is answered at once with the
reason instead, and no load is tried for it on the request path;
each waits at most `timeout_s` and then gets a 503 with Retry-After while the
load goes on for the next caller. Which worker is "first" comes from the
allocator's HRW ranking over eligible workers, so every router picks the same
one and the placement, when it arrives, usually agrees.

Overflow: every holder's batch is full (router.picking), so a request sent to
one would queue until some other adapter drains out of a GPU slot, seconds in
the fleet simulator. The adapter goes instead to its best-ranked worker whose
batch has room, loaded there first if need be (again one load per adapter,
and every router ranks alike, so their loads coalesce on one worker). A
failed or slow overflow load is no error: the request queues at a holder.
The placement, measuring the demand, sizes the replica set up at its next tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from allocator.hrw import rank_workers
from discovery.records import AdapterFailure, AdapterRecord
from router.errors import AdapterFailed, ColdStartTimeout, NoWorkerAvailable
from router.fleet import Fleet, WorkerView
from router.metrics import RouterMetrics
from router.picking import first_with_room
from router.sources import cached_first
from router.workers import AdapterRejected, WorkerCallFailed, WorkerClient, adapter_path

log = logging.getLogger(__name__)


class ColdStarter:
    def __init__(self, fleet: Fleet, client: WorkerClient, metrics: RouterMetrics,
                 timeout_s: Callable[[], float]) -> None:
        self._fleet = fleet
        self._client = client
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._loads: dict[tuple[str, str], asyncio.Task[str]] = {}
        """(adapter, worker id or "" for a cold start's walk down the ranking) -> its load."""
        self._rankings: dict[str, tuple[AdapterRecord, list[str]]] = {}
        """adapter -> (the catalog record it was ranked for, worker ids in HRW order)."""
        self._rankings_revision = -1

    def ranked(self, adapter: str) -> list[WorkerView]:
        """Healthy workers that can serve `adapter` (its base model, its rank), in its HRW order: the same
        on every router. Rankings are kept until the membership changes: an overflow asks on the request
        path, and ranking a 1,000-worker fleet costs about a millisecond."""
        fleet = self._fleet
        record = fleet.catalog[adapter]
        if self._rankings_revision != fleet.membership_revision:
            self._rankings.clear()
            self._rankings_revision = fleet.membership_revision
        cached = self._rankings.get(adapter)
        if cached is None or cached[0] != record:
            pool = [v.record.to_worker() for v in fleet.workers.values()
                    if record.base_model in v.record.base_models and v.record.max_lora_rank >= record.rank]
            cached = self._rankings[adapter] = (record, [w.id for w in rank_workers(adapter, pool)])
        return [view for view in map(fleet.workers.__getitem__, cached[1]) if view.healthy]

    async def ensure_loaded(self, adapter: str) -> None:
        """Return once some worker holds `adapter`; raise 503 if that takes too long or it is marked failed."""
        record = self._fleet.catalog[adapter]
        if record.failed is not None:
            raise _failed(record, record.failed)
        task = self._task(adapter, "", lambda: self._load(
            adapter, cached_first(self.ranked(adapter), record), cold=True))
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

    async def overflow(self, adapter: str, exclude: Collection[str]) -> WorkerView | None:
        """The best-ranked worker (not in `exclude`) whose batch has room for `adapter`, holding it by the
        time this returns; None when no worker has room or the load there fails or outlasts the cold-start
        timeout (the load goes on)."""
        ranked = [v for v in self.ranked(adapter) if v.id not in exclude and adapter not in v.draining]
        view = first_with_room(ranked, adapter)
        if view is None:
            self._metrics.overflows.labels("queued").inc()
            return None
        if adapter in view.holds:
            self._metrics.overflows.labels("holder").inc()
            return view
        task = self._task(adapter, view.id, lambda: self._load(adapter, [view], cold=False))
        try:
            async with asyncio.timeout(self._timeout_s()):
                await asyncio.shield(task)
        except (TimeoutError, NoWorkerAvailable):
            self._metrics.overflows.labels("queued").inc()
            return None
        self._metrics.overflows.labels("loaded").inc()
        return view

    def _task(self, adapter: str, worker: str, load: Callable[[], Coroutine[Any, Any, str]]) -> asyncio.Task[str]:
        key = (adapter, worker)
        task = self._loads.get(key)
        if task is None:
            task = asyncio.create_task(load(), name=f"load:{adapter}@{worker or 'first'}")
            self._loads[key] = task
            task.add_done_callback(lambda _t: self._loads.pop(key, None))
        return task

    async def _load(self, adapter: str, ranked: list[WorkerView], *, cold: bool) -> str:
        """Load on the first of `ranked` that accepts; the worker's id."""
        record = self._fleet.catalog[adapter]
        label = self._metrics.adapter(adapter)
        reasons: list[str] = []
        for view in ranked:
            try:
                await self._client.load(view.url, record, wait_s=self._timeout_s())
            except (WorkerCallFailed, AdapterRejected) as exc:
                reasons.append(f"{view.id}: {exc}")
                continue
            self._fleet.add_holding(view.id, adapter)
            if cold:
                self._metrics.cold_starts.labels(label, "loaded").inc()
            return view.id
        if cold:
            self._metrics.cold_starts.labels(label, "failed").inc()
        log.warning("load of %s failed on every worker tried: %s", adapter, "; ".join(reasons) or "none")
        raise NoWorkerAvailable(_why_none(adapter, record.base_model, self._fleet) if not ranked else
                                f"No worker could load adapter '{adapter}'.", headers={"Retry-After": "5"})


def _why_none(adapter: str, base: str, fleet: Fleet) -> str:
    """Why no worker was even tried: the client (and its operator) should not go looking at the adapter."""
    serving = [v for v in fleet.workers.values() if base in v.record.base_models]
    if not serving:
        return f"No worker serves base model '{base}', which adapter '{adapter}' is for."
    return (f"No healthy worker for adapter '{adapter}' right now: all {len(serving)} workers serving "
            f"'{base}' are out of rotation or cannot take its rank.")


def _failed(record: AdapterRecord, failed: AdapterFailure) -> AdapterFailed:
    """The client's error for an adapter marked failed; the adapter's server path is never shown."""
    detail = failed.detail.replace(record.source, "<path>").replace(adapter_path(record.source), "<path>")
    return AdapterFailed(f"Adapter '{record.name}' cannot be served: every worker it was placed on refused to "
                         f"load it ({failed.reason}: {detail}). The router retries the load in the background.",
                         param="model")
