"""Drives every worker to the placement: load, confirm, drain, unload, and put back what it lost.

Wiring in server.py: `reconciler = Reconciler(state, worker_client, metrics, live, ...)`; run `reconciler.run()`
as one of the process's loops; call `reconciler.on_membership(change)` right
after `state.set_membership` returns a non-empty change and
`reconciler.on_placement()` right after `state.placement` is replaced. The admin
API reads `reconciler.failures(name)` and `reconciler.worker_errors()`. Given the
catalog store, the leader's reconciler also marks an adapter failed in the
catalog when every worker placed for it refused it, and clears the mark once
one holds it (router.core.reconcile_plan.failure_marks); the request path then fails
at once for it (router.core.routing) while the loads go on being retried.

A plan round (allocator.plan.plan_actions over the placement and what the
workers hold) runs on a placement change, a membership change, a listing that
found holdings changed, and every `control.reconcile_s` (router.core.reconcile_plan.plan_round,
the simulator's too). Its result is a level, not a queue: one agent task per
worker reads its worker's part of the latest round on every pass and checks each
action against what the worker holds now, so a pass repeated or missed does no
harm. An agent does its worker's calls one at a time (a slow or dead worker
delays nobody else; loads never race on one worker), at most
`control.worker_ops_per_s` of them, and lists the worker's /v1/models every
`control.reconcile_s` and at once when its instance changes (a restart loses
every runtime-loaded adapter); a worker that does not answer is listed again
with backoff, up to `control.retry_max_s` apart (a fleet of 10,000 workers
that cannot be reached was 2,000 failing calls a second from every router). A failed load is retried with jittered
exponential backoff: up to `control.retry_max_s` apart when the worker did not
answer, up to `control.failed_retry_max_s` when it refused the adapter (its
files may appear later). A load counts once the listing shows it; an
unload first drains: the worker gets no new requests for the adapter and the
unload waits for this router's requests there to finish (at most
`timeouts.drain_timeout_s`). Every router runs this, leader or not: loads are
idempotent and every router drains its own requests.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping

from allocator.model import Demand
from allocator.plan import DesiredIndex
from discovery.aio import wait_event
from discovery.election import LeaderElection
from discovery.errors import EtcdUnavailable
from discovery.stores import CatalogStore
from router.core.events import AdaptersListed, DrainCancelled, DrainStarted, Unloaded
from router.core.fleetstate import Effect, FleetState, WorkerState
from router.core.reconcile_plan import (
    Failure,
    WorkerBook,
    WorkerWork,
    backoff_delay,
    failure_marks,
    idle_grace_s,
    plan_round,
    stale,
)
from router.core.records import AdapterRecord
from router.live import LiveConfig
from router.metrics import OVERFLOW, RouterMetrics
from router.workers import AdapterRejected, WorkerCallFailed, WorkerClient

log = logging.getLogger(__name__)

DRAIN_POLL_S = 0.05
NO_WORK = WorkerWork()


_NONE: frozenset[str] = frozenset()

LISTINGS_PER_S = 200.0
"""At most this many periodic /v1/models listings a second per router (see `Reconciler._list_period`)."""


class _Agent:
    __slots__ = ("book", "desired", "instance", "list_error", "loaded_from", "loading", "task", "wake", "worker_id")

    def __init__(self, worker_id: str, instance: str) -> None:
        self.worker_id = worker_id
        self.instance = instance
        self.book = WorkerBook()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.list_error: str | None = None
        self.loading: set[str] = set()
        self.loaded_from: dict[str, str] = {}
        """adapter -> the source it was loaded from, so a catalog change re-loads it in place."""
        self.desired: frozenset[str] | None = None
        """The adapters the placement wanted here as of this agent's last pass (None: no pass yet)."""

    def restart(self, instance: str) -> None:
        self.instance = instance
        self.book = WorkerBook()
        self.loaded_from.clear()
        self.wake.set()


class Reconciler:
    def __init__(self, state: FleetState, client: WorkerClient, metrics: RouterMetrics, live: LiveConfig, *,
                 estimates: Callable[[], Mapping[str, Demand]] = dict,
                 placement_stale: Callable[[], bool] = lambda: False,
                 election: LeaderElection | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rng: random.Random | None = None,
                 catalog: CatalogStore | None = None) -> None:
        """`estimates`: this router's demand per adapter (the control tick's); `placement_stale`: whether
        etcd is out of reach, so the placement cannot see any demand (idle adapters then stay)."""
        self._state = state
        self._client = client
        self._metrics = metrics
        self._live = live
        self._estimates = estimates
        self._placement_stale = placement_stale
        self._election = election
        self._catalog = catalog
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()
        self._agents: dict[str, _Agent] = {}
        self._wake = asyncio.Event()
        self._managed: set[str] = set()
        self._work: dict[str, WorkerWork] = {}
        """The latest plan round's work per worker: a level each agent pass reads, not a queue it drains."""
        self._index: DesiredIndex | None = None
        self._woken_for: tuple[int, str] | None = None
        """(catalog version, config version) as of the last round that woke every agent."""
        """The placement indexed once for the many plan rounds against it (one after every finished load)."""
        self._unmet_since: dict[tuple[str, str], float] = {}
        self._idle_since: dict[tuple[str, str], float] = {}
        self._labels: set[str] = set()
        """Adapter labels of the replica gauges set last round; the series of departed adapters go."""
        self._failed_labels: set[str] = set()
        self.rounds = 0
        self.passes = 0
        """Agent passes so far; a test waits for it to advance instead of sleeping."""

    # -- what server.py calls ---------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                self._wake.clear()
                self._sync_agents()
                self.plan_round()
                self._update_metrics()
                await self._mark_failures()
                for agent in self._agents.values():
                    if agent.task is not None and agent.task.done() and agent.task.exception() is not None:
                        raise agent.task.exception()  # type: ignore[misc]
                await wait_event(self._wake, self._live.config.control.reconcile_s)
        finally:
            tasks = [a.task for a in self._agents.values() if a.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def on_membership(self, change: Effect) -> None:
        for worker_id in change.restarted:
            agent = self._agents.get(worker_id)
            view = self._state.workers.get(worker_id)
            if agent is not None and view is not None:
                agent.restart(view.record.instance)
        self._wake.set()

    def on_placement(self) -> None:
        self._wake.set()

    # -- what the admin API reads -----------------------------------------------------------
    def failures(self, adapter: str) -> dict[str, Failure]:
        """worker id -> the last failure of a load/unload of `adapter` there, while it stands."""
        return {wid: f for wid, a in self._agents.items() if (f := a.book.failures.get(adapter)) is not None}

    def worker_errors(self) -> dict[str, str]:
        """worker id -> why its /v1/models could not be read on the last try."""
        return {wid: a.list_error for wid, a in self._agents.items() if a.list_error}

    # -- plan rounds ------------------------------------------------------------------------
    def plan_round(self) -> None:
        """Diff placement vs holdings once for the whole fleet and hand each agent its part."""
        state = self._state
        self.rounds += 1
        self._managed.update(state.catalog)
        self._managed.update(state.placement.replica_sets)
        holdings = {wid: frozenset(v.holds) for wid, v in state.workers.items()}
        loading = {wid: frozenset(a.loading) for wid, a in self._agents.items() if a.loading}
        control = self._live.config.control
        work = plan_round(self._placement_index(), holdings, loading, self._live.config.placement.plan,
                          self._estimates(), state.catalog, self._managed, self._idle_since, self._clock(),
                          idle_grace_s(control.tick_s, control.reconcile_s),
                          placement_stale=self._placement_stale())
        self._work = work
        self._wake_agents(work)

    def _wake_agents(self, work: Mapping[str, WorkerWork]) -> None:
        """Wake the agents a round gives something to do: work of their own, a changed desired set (a drain
        to cancel), or, after a catalog or config change, a source to re-check. Why not all: at 10,000
        workers a round that woke every agent cost 10,000 passes, most of them finding nothing."""
        everyone = (self._state.catalog_version, self._live.loaded.version) != self._woken_for
        self._woken_for = (self._state.catalog_version, self._live.loaded.version)
        on = self._placement_index().on
        for worker_id, agent in self._agents.items():
            if everyone or worker_id in work or on.get(worker_id, _NONE) != agent.desired:
                agent.wake.set()

    def _placement_index(self) -> DesiredIndex:
        placement = self._state.placement
        if self._index is None or self._index.placement is not placement:
            self._index = DesiredIndex(placement)
        return self._index

    def _desired(self, worker_id: str) -> frozenset[str]:
        return self._placement_index().on.get(worker_id, frozenset())

    async def _mark_failures(self) -> None:
        """The leader marks adapters every placed worker refused as failed in the catalog (or clears it)."""
        election = self._election
        fence = election.fence if election is not None else None
        if self._catalog is None or fence is None or election is None or not election.is_leader:
            return
        state = self._state
        refused: dict[str, dict[str, Failure]] = {}
        for worker_id, agent in self._agents.items():
            for name in agent.book.failures:
                record = state.catalog.get(name)
                failure = agent.book.refusal(name, self._key(record)) if record is not None else None
                if failure is not None:
                    refused.setdefault(name, {})[worker_id] = failure
        marks = failure_marks(state.catalog, state.placement, state.holders, refused, state.workers, self._wall())
        for name, mark in sorted(marks.items()):
            seen = state.catalog.get(name)
            if seen is None:
                continue
            try:
                written = await self._catalog.mark_failed(seen, mark, fence)
            except EtcdUnavailable as exc:
                log.warning("cannot mark adapter %s in the catalog: %s", name, exc)
                return
            if written and mark is not None:
                log.warning("adapter %s marked failed: every worker placed for it refused it (%s: %s)",
                            name, mark.reason, mark.detail)
            elif written:
                log.info("adapter %s no longer marked failed: a worker holds it", name)

    # -- agents -----------------------------------------------------------------------------
    def _sync_agents(self) -> None:
        workers = self._state.workers
        for worker_id in [w for w in self._agents if w not in workers]:
            gone = self._agents.pop(worker_id)
            if gone.task is not None:
                gone.task.cancel()
        for worker_id, view in workers.items():
            agent = self._agents.get(worker_id)
            if agent is None:
                agent = self._agents[worker_id] = _Agent(worker_id, view.record.instance)
                agent.task = asyncio.create_task(self._agent_loop(agent), name=f"reconcile:{worker_id}")
            elif agent.instance != view.record.instance:
                agent.restart(view.record.instance)

    async def _agent_loop(self, agent: _Agent) -> None:
        while True:
            agent.wake.clear()
            await self._pass(agent)
            await wait_event(agent.wake, agent.book.next_wake(self._clock(), DRAIN_POLL_S))

    def _current(self, agent: _Agent, view: WorkerState, book: WorkerBook) -> bool:
        """Is the worker this pass started on still the same instance? (Checked after every await.)"""
        return self._state.workers.get(agent.worker_id) is view and agent.book is book

    async def _pass(self, agent: _Agent) -> None:
        state = self._state
        view = state.workers.get(agent.worker_id)
        if view is None:
            return
        book = agent.book
        self.passes += 1
        now = self._clock()
        if now >= book.list_at:
            control = self._live.config.control
            period = self._list_period(control.reconcile_s)
            book.list_at = now + period
            if await self._list(agent, view) is None:
                book.list_failures += 1
                book.list_at = now + max(period, backoff_delay(book.list_failures, control.reconcile_s,
                                                               control.retry_max_s, self._rng))
            else:
                book.list_failures = 0
            if not self._current(agent, view, book):
                return
        desired = agent.desired = self._desired(agent.worker_id)
        for name in sorted(desired & view.draining):
            state.apply(DrainCancelled(agent.worker_id, name))
            book.draining_since.pop(name, None)
        work = self._work.get(agent.worker_id, NO_WORK)
        for name in work.unloads:
            if name in view.holds and name not in view.draining and name not in desired:
                state.apply(DrainStarted(agent.worker_id, name))
                book.draining_since[name] = now
        agent.loaded_from = {n: agent.loaded_from.get(n) or state.catalog[n].source
                             for n in view.holds if n in state.catalog}
        todo = [(n, False) for n in work.loads if n not in view.holds]
        todo += [(n, True) for n in stale(desired & (view.holds - view.draining), agent.loaded_from, state.catalog)]
        loaded = []
        for name, inplace in todo:
            record = state.catalog.get(name)
            if record is None or not book.may_try(name, self._clock(), self._key(record)):
                continue
            agent.loading.add(name)
            try:
                ok = await self._load(view, book, record, inplace)
            finally:
                agent.loading.discard(name)
            if ok:
                loaded.append(name)
            if not self._current(agent, view, book):
                return
        if loaded:
            await self._confirm(agent, view, book, loaded)
            if not self._current(agent, view, book):
                return
        await self._finish_drains(agent, view, book)

    def _list_period(self, reconcile_s: float) -> float:
        """Seconds between two listings of one worker: `reconcile_s`, stretched so that this router lists at
        most `LISTINGS_PER_S` workers a second (10,000 workers every 5 s were 2,000 calls a second from each
        router, its whole CPU). Loads, restarts and lost adapters are seen at once all the same: a load is
        confirmed by its own listing, and a new instance id lists the worker at once."""
        stretched = len(self._agents) / LISTINGS_PER_S
        # jittered, so that the listings of a fleet started at once spread instead of coming back together
        return reconcile_s if stretched <= reconcile_s else stretched * (0.5 + self._rng.random())

    def _key(self, record: AdapterRecord) -> tuple[str, str]:
        return record.source, self._live.loaded.version

    async def _list(self, agent: _Agent, view: WorkerState) -> set[str] | None:
        try:
            names = await self._client.list_adapters(view.url)
        except (AdapterRejected, WorkerCallFailed) as exc:
            if agent.list_error != str(exc):
                log.warning("worker %s: cannot list adapters: %s", agent.worker_id, exc)
            agent.list_error = str(exc)
            return None
        agent.list_error = None
        if self._state.workers.get(agent.worker_id) is view:
            if names != view.holds:
                self._wake.set()
            self._state.apply(AdaptersListed(agent.worker_id, frozenset(names)))
            self._metrics.worker_adapters.labels(agent.worker_id).set(len(names))
        return names

    async def _rate_limit(self, book: WorkerBook) -> None:
        now = self._clock()
        start = max(now, book.next_op_at)
        book.next_op_at = start + 1.0 / self._live.config.control.worker_ops_per_s
        if start > now:
            await asyncio.sleep(start - now)

    async def _load(self, view: WorkerState, book: WorkerBook, record: AdapterRecord, inplace: bool) -> bool:
        await self._rate_limit(book)
        try:
            await self._client.load(view.url, record, inplace)
        except (AdapterRejected, WorkerCallFailed) as exc:
            self._failed(view, book, record.name, "load", exc, self._key(record))
            return False
        self._metrics.adapter_ops.labels("load", "ok", "").inc()
        return True

    async def _confirm(self, agent: _Agent, view: WorkerState, book: WorkerBook, loaded: list[str]) -> None:
        """A load counts once /v1/models lists the adapter; only then is the worker a holder."""
        listed = await self._list(agent, view)
        if listed is None:
            return
        for name in loaded:
            record = self._state.catalog.get(name)
            if record is None:
                continue
            if name in listed:
                book.succeeded(name)
                agent.loaded_from[name] = record.source
            else:
                error = WorkerCallFailed("the load succeeded but /v1/models does not list the adapter")
                self._failed(view, book, name, "load", error, self._key(record), reason="not_listed")

    async def _finish_drains(self, agent: _Agent, view: WorkerState, book: WorkerBook) -> None:
        drain_timeout = self._live.config.timeouts.drain_timeout_s
        for name, since in list(book.draining_since.items()):
            if name not in view.draining:
                book.draining_since.pop(name, None)
                continue
            now = self._clock()
            if now - since < drain_timeout and (view.adapter_inflight.get(name, 0)
                                                or await self._busy_elsewhere(view, name)):
                continue
            key = (name, self._live.loaded.version)
            if not book.may_try(name, now, key):
                continue
            await self._rate_limit(book)
            try:
                await self._client.unload(view.url, name)
            except (AdapterRejected, WorkerCallFailed) as exc:
                self._failed(view, book, name, "unload", exc, key)
                continue
            self._metrics.adapter_ops.labels("unload", "ok", "").inc()
            if not self._current(agent, view, book):
                return
            book.succeeded(name)
            book.draining_since.pop(name, None)
            agent.loaded_from.pop(name, None)
            self._state.apply(Unloaded(agent.worker_id, name))

    async def _busy_elsewhere(self, view: WorkerState, adapter: str) -> bool:
        """Whether the worker still runs requests for `adapter` (other routers' included).

        A worker whose metrics cannot be read counts as idle: the drain then
        rests on this router's own count and the drain timeout, as before.
        """
        try:
            return adapter in await self._client.active_adapters(view.url)
        except WorkerCallFailed as exc:
            log.info("drain of %s on %s: worker metrics unreadable (%s); using local counts", adapter,
                     view.id, exc)
            return False

    def _failed(self, view: WorkerState, book: WorkerBook, adapter: str, op: str, exc: Exception,
                key: tuple[str, str], reason: str | None = None) -> None:
        permanent = isinstance(exc, AdapterRejected)
        why = reason or (exc.reason if isinstance(exc, AdapterRejected) else "transient")
        detail = exc.detail if isinstance(exc, AdapterRejected) else str(exc)
        control = self._live.config.control
        cap = control.failed_retry_max_s if permanent else control.retry_max_s
        delay = backoff_delay(book.attempts(adapter) + 1, control.retry_base_s, cap, self._rng)
        failure = book.failed(adapter, op=op, reason=why, detail=detail, permanent=permanent,
                              now=self._clock(), wall=self._wall(), key=key, retry_delay=delay)
        self._metrics.adapter_ops.labels(op, "failed", why).inc()
        if failure.attempts == 1:
            log.warning("%s of %s on worker %s failed (%s): %s; retrying with backoff", op, adapter, view.id,
                        why, detail)
        if permanent:
            self._wake.set()

    # -- metrics ----------------------------------------------------------------------------
    def _update_metrics(self) -> None:
        state, metrics = self._state, self._metrics
        now = self._clock()
        unmet: dict[tuple[str, str], float] = {}
        labels: set[str] = set()
        for name, replica_set in state.placement.replica_sets.items():
            holders = state.holders(name)
            label = metrics.adapter(name)
            if label != OVERFLOW:  # past the label cap one series would show some adapter's value, at 2 calls each
                labels.add(label)
                metrics.replicas_desired.labels(label).set(len(replica_set.workers))
                metrics.replicas_holding.labels(label).set(len(holders))
            for worker in replica_set.workers:
                if worker not in holders and worker in state.workers:
                    unmet[(worker, name)] = self._unmet_since.get((worker, name), now)
        for label in self._labels - labels:
            metrics.forget(metrics.replicas_desired, label)
            metrics.forget(metrics.replicas_holding, label)
        self._labels = labels
        self._unmet_since = unmet
        metrics.reconcile_lag.set(now - min(unmet.values(), default=now))
        failed_names = [r.name for r in state.catalog.values() if r.failed is not None]
        metrics.adapters_failed.set(len(failed_names))
        failed = {metrics.adapter(name) for name in failed_names}
        for label in self._failed_labels - failed:
            metrics.adapter_failed.remove(label)
        for label in failed:
            metrics.adapter_failed.labels(label).set(1)
        self._failed_labels = failed

