"""The reconciler's decisions and memory, without I/O.

The fleet-wide diff (which loads, which unloads, make before break, within
budgets) is allocator.plan.plan_actions; `worker_work` narrows its answer to
what this router should do on each worker. `WorkerBook` keeps what one worker's
agent remembers between passes: failures with their reasons, backoff
deadlines, drains in progress and the rate limit's next free slot.
`failure_marks` decides which catalog entries to mark failed (every worker
placed for the adapter refused it) or clear. Time and randomness are arguments.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Iterable, Mapping

import msgspec

from allocator.config import PlanBudget
from allocator.model import Action, Demand, Placement
from allocator.plan import DesiredIndex, plan_actions
from router.core.records import AdapterFailure, AdapterRecord


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    """Why the last load of an adapter on a worker failed; shown by GET /v1/loras/{name}."""

    op: str
    """load | unload"""
    reason: str
    detail: str
    permanent: bool
    attempts: int
    at: float
    """Wall-clock time of the last attempt."""


class WorkerWork(msgspec.Struct, kw_only=True):
    loads: list[str] = msgspec.field(default_factory=list)
    unloads: list[str] = msgspec.field(default_factory=list)


def plan_round(desired: DesiredIndex, holdings: Mapping[str, frozenset[str]], loading: Mapping[str, frozenset[str]],
               config: PlanBudget, estimates: Mapping[str, Demand], catalog: Mapping[str, AdapterRecord],
               managed: Collection[str], idle_since: dict[tuple[str, str], float], now: float, grace_s: float, *,
               placement_stale: bool = False) -> dict[str, WorkerWork]:
    """One plan round, the reconciler's and the simulator's: the fleet-wide diff of the placement against
    what the workers hold and are loading (allocator.plan.plan_actions), narrowed to what this router
    should do on each worker now (`worker_work`)."""
    actions = plan_actions(desired, holdings, loading, config, estimates)
    return worker_work(actions, desired.placement, catalog, managed, idle_since, now, grace_s,
                       placement_stale=placement_stale)


def worker_work(actions: Iterable[Action], placement: Placement, catalog: Mapping[str, AdapterRecord],
                managed: Collection[str], idle_since: dict[tuple[str, str], float], now: float,
                grace_s: float, *, placement_stale: bool = False) -> dict[str, WorkerWork]:
    """The plan's actions per worker, minus the unloads this router must not do (yet).

    An adapter missing from the placement is unloaded only if it also left the
    catalog and this router managed it: one just added to the catalog waits for
    the leader's next placement, and adapters a worker was started with stay.
    An adapter the placement sizes to zero replicas (min_replicas 0, idle) is
    unloaded only after `grace_s` of being so: a cold start loads it outside the
    placement, and the placement needs a tick or two to see that demand.
    `idle_since` is updated in place (first time each such unload was planned).
    While `placement_stale` (etcd unreachable: the placement cannot see any demand) such adapters stay and
    their grace starts again once it is not: a cold-started adapter in use is not unloaded under its clients.
    """
    work: dict[str, WorkerWork] = {}
    idle_now: dict[tuple[str, str], float] = {}
    for action in actions:
        todo = work.setdefault(action.worker, WorkerWork())
        replica_set = placement.replica_sets.get(action.adapter)
        if action.kind == "load":
            if action.adapter in catalog:
                todo.loads.append(action.adapter)
        elif replica_set is None:
            if action.adapter not in catalog and action.adapter in managed:
                todo.unloads.append(action.adapter)
        elif replica_set.workers:
            todo.unloads.append(action.adapter)
        elif not placement_stale:
            pair = (action.worker, action.adapter)
            since = idle_now[pair] = idle_since.get(pair, now)
            if now - since >= grace_s:
                todo.unloads.append(action.adapter)
    idle_since.clear()
    idle_since.update(idle_now)
    return work


def idle_grace_s(tick_s: float, reconcile_s: float) -> float:
    """How long an adapter sized to zero replicas stays loaded: two ticks for the placement to see the
    demand of a cold start made outside it, and a round for the reconciler to hear of it."""
    return 2 * tick_s + reconcile_s


def stale(held: Collection[str], loaded_from: Mapping[str, str],
          catalog: Mapping[str, AdapterRecord]) -> tuple[str, ...]:
    """Held adapters whose catalog source changed since they were loaded: re-load them in place."""
    return tuple(sorted(n for n in held
                        if n in catalog and n in loaded_from and loaded_from[n] != catalog[n].source))


def failure_marks(catalog: Mapping[str, AdapterRecord], placement: Placement,
                  holders: Callable[[str], Collection[str]], refused: Mapping[str, Mapping[str, Failure]],
                  workers: Collection[str], now: float) -> dict[str, AdapterFailure | None]:
    """The catalog marks to change: adapter -> its new mark (None clears it).

    An adapter is failed when no worker holds it and every worker of its replica
    set that is still in the fleet refused it (`refused`: adapter -> worker ->
    the standing refusal for the adapter's current source); a holder clears the
    mark. Anything in between (workers not tried yet, transient failures) keeps
    what the catalog says, so a retry in progress does not flap the mark.
    """
    changes: dict[str, AdapterFailure | None] = {}
    for name, record in catalog.items():
        if holders(name):
            if record.failed is not None:
                changes[name] = None
            continue
        replica_set = placement.replica_sets.get(name)
        placed = sorted(w for w in replica_set.workers if w in workers) if replica_set else []
        refusals = refused.get(name, {})
        if not placed or any(w not in refusals for w in placed):
            continue
        first = refusals[placed[0]]
        mark = AdapterFailure(reason=first.reason, detail=first.detail, workers=tuple(placed),
                              since=record.failed.since if record.failed else now)
        if mark != record.failed:
            changes[name] = mark
    return changes


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full-range jitter in [0.5, 1.5) x, so retries from many routers spread."""
    step = min(max_s, base_s * 2.0 ** max(0, attempt - 1))
    return step * (0.5 + rng.random())


class WorkerBook:
    """What the reconciler remembers about one worker instance; a restarted worker gets a fresh book."""

    __slots__ = ("draining_since", "failed_for", "failures", "list_at", "list_failures", "next_op_at", "retry_at")

    def __init__(self) -> None:
        self.failures: dict[str, Failure] = {}
        self.failed_for: dict[str, tuple[str, str]] = {}
        """adapter -> (source, config version) a permanent failure holds for; a change retries at once."""
        self.retry_at: dict[str, float] = {}
        self.draining_since: dict[str, float] = {}
        self.next_op_at = 0.0
        self.list_at = 0.0
        self.list_failures = 0
        """Listings in a row the worker did not answer: the next one waits longer."""

    def may_try(self, adapter: str, now: float, key: tuple[str, str]) -> bool:
        """False while a backoff runs; a permanent failure for another source or config is forgotten.

        A permanent failure (the worker refused the adapter) is retried too, on a
        longer backoff: files that were missing may appear later (a synced volume,
        a slow download), and nothing else would ever load them.
        """
        failure = self.failures.get(adapter)
        if failure is not None and failure.permanent and self.failed_for.get(adapter) != key:
            self.succeeded(adapter)
        return self.retry_at.get(adapter, 0.0) <= now

    def failed(self, adapter: str, *, op: str, reason: str, detail: str, permanent: bool, now: float,
               wall: float, key: tuple[str, str], retry_delay: float) -> Failure:
        previous = self.failures.get(adapter)
        failure = Failure(op=op, reason=reason, detail=detail, permanent=permanent,
                          attempts=(previous.attempts + 1) if previous else 1, at=wall)
        self.failures[adapter] = failure
        if permanent:
            self.failed_for[adapter] = key
        self.retry_at[adapter] = now + retry_delay
        return failure

    def succeeded(self, adapter: str) -> None:
        self.failures.pop(adapter, None)
        self.failed_for.pop(adapter, None)
        self.retry_at.pop(adapter, None)

    def refusal(self, adapter: str, key: tuple[str, str]) -> Failure | None:
        """The standing permanent load failure of `adapter` for `key` (its source and config), if any."""
        failure = self.failures.get(adapter)
        if failure is None or not failure.permanent or failure.op != "load" or self.failed_for.get(adapter) != key:
            return None
        return failure

    def attempts(self, adapter: str) -> int:
        failure = self.failures.get(adapter)
        return failure.attempts if failure else 0

    def next_wake(self, now: float, drain_poll_s: float) -> float:
        """Seconds until something in this book is due: a listing, a retry, a drain check."""
        due = [self.list_at, *self.retry_at.values()]
        if self.draining_since:
            due.append(now + drain_poll_s)
        return max(0.0, min(due) - now)
