"""What one router knows about the fleet, written only by `FleetState.apply`.

Who is up, who holds what, where each adapter belongs, what is in flight
where, and which workers are out of rotation. Every edge reports what it saw
as an event (router.core.events); the routing policy (router.core.routing)
and the edges' readers only read. The simulator keeps the same state with the
same events, so its routing runs on what the router would know.

The holder index is kept incrementally so that routing a request is
O(replicas), never O(fleet). Everything runs on one event loop (or the
simulator's), so plain sets and dicts suffice.
"""

from __future__ import annotations

import msgspec

from allocator.hrw import rank_workers
from allocator.model import Placement
from router.core.events import (
    AdapterDeleted,
    AdapterMissing,
    AdaptersListed,
    AdapterWritten,
    Answered,
    CatalogChanged,
    DrainCancelled,
    DrainStarted,
    Event,
    LoadFinished,
    MembershipChanged,
    PlacementChanged,
    ProbeFailed,
    ProbeOk,
    RequestBegun,
    RequestEnded,
    RulesChanged,
    Unloaded,
    Unreachable,
)
from router.core.health import HealthRules, should_eject
from router.core.prefix import PrefixIndex, PrefixRules
from router.core.records import AdapterRecord, WorkerRecord


class WorkerState:
    """One worker as this router sees it. Read anywhere; written by `FleetState` alone."""

    __slots__ = ("adapter_inflight", "consecutive_5xx", "draining", "healthy", "holds", "inflight", "prefix",
                 "probe_at", "record")

    def __init__(self, record: WorkerRecord, prefix_blocks: int = 0) -> None:
        """`prefix_blocks`: the size of its prefix index (`FleetState` passes its rules'; 0 keeps none)."""
        self.record = record
        self.healthy = True
        self.consecutive_5xx = 0
        self.probe_at = 0.0
        """While out of rotation: when the prober should next ask its /health."""
        self.inflight = 0
        self.adapter_inflight: dict[str, int] = {}
        """Requests in flight here per adapter: a drain waits for its adapter's count to reach 0, and the
        picking reads which adapters occupy the batch."""
        self.holds: set[str] = set()
        """Adapters the worker listed in /v1/models (or confirmed by a load)."""
        self.draining: set[str] = set()
        """Held adapters that get no new requests because the placement dropped them here."""
        self.prefix = PrefixIndex(prefix_blocks)
        """The prompt blocks this router sent here lately: what the worker likely has cached."""

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def url(self) -> str:
        return self.record.url

    @property
    def max_loras(self) -> int | None:
        return self.record.max_loras

    @property
    def max_seqs(self) -> int | None:
        return self.record.max_num_seqs


class Effect(msgspec.Struct, frozen=True):
    """What an event changed that a loop outside may act on (the reconciler, the metrics)."""

    changed: bool = False
    """Holdings or health changed: a plan round or a gauge may be due."""
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    """Workers whose instance id changed: they lost every runtime-loaded adapter."""


NOTHING = Effect()
CHANGED = Effect(changed=True)


class FleetState:
    def __init__(self, rules: HealthRules | None = None, prefix: PrefixRules | None = None) -> None:
        self.workers: dict[str, WorkerState] = {}
        self.catalog: dict[str, AdapterRecord] = {}
        self.placement = Placement()
        self.placement_known = False
        """A placement arrived (even an empty one): until then the router is not ready."""
        self.catalog_version = 0
        """Counts catalog changes: a reconciler re-checks every worker's sources only when it moved."""
        self.catalog_known = False
        self.membership_known = False
        """The catalog's and the membership's first listing arrived: until both have, a placement computed
        here would be computed from nothing (at 100,000 adapters the first listing takes seconds), and
        written it would drop every replica set."""
        self.rules = rules or HealthRules()
        self.prefix_rules = prefix or PrefixRules()
        self.membership_revision = 0
        self._holders: dict[str, set[str]] = {}
        self._bases: frozenset[str] = frozenset()
        self._rankings: dict[str, tuple[AdapterRecord, list[str]]] = {}
        """adapter -> (the catalog record it was ranked for, eligible worker ids in HRW order); kept until the
        membership changes: an overflow asks on the request path, and ranking 1,000 workers costs ~1 ms."""

    def apply(self, event: Event) -> Effect:
        """The one way the state changes (the request path's events first: they are most of them)."""
        match event:
            case RequestBegun():
                return self._begun(event)
            case RequestEnded():
                return self._ended(event)
            case Answered():
                return self._answered(event)
            case Unreachable():
                return self._unreachable(event)
            case AdapterMissing() | Unloaded():
                return self._gone(event)
            case AdaptersListed():
                return self._listed(event)
            case LoadFinished() | DrainCancelled():
                return self._serving(event)
            case DrainStarted():
                return self._drain(event)
            case ProbeOk():
                return self._probe_ok(event)
            case ProbeFailed():
                return self._probe_failed(event)
            case MembershipChanged():
                return self._membership(event)
            case CatalogChanged():
                self.catalog = dict(event.adapters)
                self.catalog_known = True
                self.catalog_version += 1
            case AdapterWritten():
                self.catalog[event.record.name] = event.record
                self.catalog_version += 1
            case AdapterDeleted():
                self.catalog.pop(event.name, None)
                self.catalog_version += 1
            case PlacementChanged():
                self.placement = event.placement
                self.placement_known = True
                return CHANGED
            case RulesChanged():
                self.rules = event.rules
                self._prefix_changed(event.prefix)
        return NOTHING

    # -- what the routing policy and the edges read ----------------------------------------
    def bases(self) -> frozenset[str]:
        """Every base model some worker serves; kept with the membership, read on every request."""
        return self._bases

    def holders(self, adapter: str) -> set[str]:
        """Ids of the workers serving `adapter` (holding it, not draining it), healthy or not."""
        return self._holders.get(adapter, set())

    def routable_holders(self, adapter: str) -> list[WorkerState]:
        """Healthy holders, those in the adapter's replica set first.

        A holder outside the replica set still serves while the set's members
        are loading (make before break); draining holders are never returned.
        """
        ids = self._holders.get(adapter)
        if not ids:
            return []
        workers = self.workers
        healthy = [workers[w] for w in sorted(ids) if workers[w].healthy]  # a set's order varies per process
        replica_set = self.placement.replica_sets.get(adapter)
        if replica_set is None:
            return healthy
        wanted = replica_set.workers
        placed = [v for v in healthy if v.record.id in wanted]
        return placed or healthy

    def base_workers(self, base: str) -> list[WorkerState]:
        return [v for v in self.workers.values() if v.healthy and base in v.record.base_models]

    def ranked(self, adapter: str) -> list[WorkerState]:
        """Healthy workers that can serve `adapter` (its base model, its rank) in its HRW order: the same
        on every router, so cold starts and overflows of one adapter land on one worker."""
        record = self.catalog[adapter]
        cached = self._rankings.get(adapter)
        if cached is None or cached[0] != record:
            pool = [v.record.to_worker() for v in self.workers.values()
                    if record.base_model in v.record.base_models and v.record.max_lora_rank >= record.rank]
            cached = self._rankings[adapter] = (record, [w.id for w in rank_workers(adapter, pool)])
        workers = self.workers
        return [v for v in map(workers.__getitem__, cached[1]) if v.healthy]

    def down(self) -> int:
        return sum(not v.healthy for v in self.workers.values())

    # -- membership ------------------------------------------------------
    def _membership(self, event: MembershipChanged) -> Effect:
        self.membership_known = True
        records = event.workers
        added = tuple(wid for wid in records if wid not in self.workers)
        removed = tuple(wid for wid in self.workers if wid not in records)
        restarted: list[str] = []
        for wid in removed:
            self._forget_holdings(self.workers.pop(wid))
        for wid, record in records.items():
            view = self.workers.get(wid)
            if view is None:
                self.workers[wid] = WorkerState(record, self.prefix_rules.index_blocks)
                continue
            if view.record.instance != record.instance:
                restarted.append(wid)
                self._forget_holdings(view)
                view.prefix.clear()  # a new process: an empty KV cache
                self._restore(view)
            view.record = record
        self._bases = frozenset(b for v in self.workers.values() for b in v.record.base_models)
        self.membership_revision += 1
        self._rankings.clear()
        return Effect(changed=bool(added or removed or restarted), added=added, removed=removed,
                      restarted=tuple(restarted))

    # -- holdings ---------------------------------------------------------------------------
    def _listed(self, event: AdaptersListed) -> Effect:
        view = self.workers.get(event.worker)
        if view is None or view.holds == event.adapters:
            return NOTHING
        new = set(event.adapters)
        for name in view.holds - new:
            self._unindex(name, event.worker)
        for name in new - view.holds:
            if name not in view.draining:
                self._holders.setdefault(name, set()).add(event.worker)
        view.holds = new
        view.draining &= new
        return CHANGED

    def _serving(self, event: LoadFinished | DrainCancelled) -> Effect:
        view = self.workers.get(event.worker)
        if view is None:
            return NOTHING
        view.holds.add(event.adapter)
        view.draining.discard(event.adapter)
        self._holders.setdefault(event.adapter, set()).add(event.worker)
        return CHANGED

    def _drain(self, event: DrainStarted) -> Effect:
        view = self.workers.get(event.worker)
        if view is None or event.adapter not in view.holds:
            return NOTHING
        view.draining.add(event.adapter)
        self._unindex(event.adapter, event.worker)
        return CHANGED

    def _gone(self, event: Unloaded | AdapterMissing) -> Effect:
        view = self.workers.get(event.worker)
        if view is not None:
            view.holds.discard(event.adapter)
            view.draining.discard(event.adapter)
        self._unindex(event.adapter, event.worker)
        return CHANGED

    def _unindex(self, adapter: str, worker_id: str) -> None:
        ids = self._holders.get(adapter)
        if ids is not None:
            ids.discard(worker_id)
            if not ids:
                del self._holders[adapter]

    def _forget_holdings(self, view: WorkerState) -> None:
        for name in view.holds:
            self._unindex(name, view.record.id)
        view.holds = set()
        view.draining = set()

    # -- health -------------------------------------------------------------------------------
    def _unreachable(self, event: Unreachable) -> Effect:
        view = self.workers.get(event.worker)
        if view is None:
            return NOTHING
        return self._eject(view, event.at)

    def _answered(self, event: Answered) -> Effect:
        view = self.workers.get(event.worker)
        if view is None:
            return NOTHING
        if event.status < 500:
            view.consecutive_5xx = 0
            return NOTHING
        view.consecutive_5xx += 1
        rules = self.rules
        if view.healthy and should_eject(view.consecutive_5xx, threshold=rules.down_after_failures,
                                         pool=len(self.workers), down=self.down(),
                                         max_fraction=rules.max_ejected_fraction):
            return self._eject(view, event.at)
        return NOTHING

    def _eject(self, view: WorkerState, at: float) -> Effect:
        """Out of rotation until a probe, `rules.probe_s` from now, finds it healthy."""
        was = view.healthy
        view.healthy = False
        view.probe_at = at + self.rules.probe_s
        return CHANGED if was else NOTHING

    def _probe_ok(self, event: ProbeOk) -> Effect:
        view = self.workers.get(event.worker)
        if view is None or view.healthy:
            return NOTHING
        self._restore(view)
        return CHANGED

    def _probe_failed(self, event: ProbeFailed) -> Effect:
        view = self.workers.get(event.worker)
        if view is not None:
            view.probe_at = event.at + self.rules.probe_s
        return NOTHING

    @staticmethod
    def _restore(view: WorkerState) -> None:
        view.healthy = True
        view.consecutive_5xx = 0

    def _prefix_changed(self, rules: PrefixRules) -> None:
        self.prefix_rules = rules
        for view in self.workers.values():
            view.prefix.capacity = rules.index_blocks
            if not rules.index_blocks:
                view.prefix.clear()

    # -- requests -------------------------------------------------------------------------------
    def _begun(self, event: RequestBegun) -> Effect:
        view = self.workers.get(event.worker)
        if view is not None:
            view.inflight += 1
            adapter = event.adapter
            if adapter is not None:
                counts = view.adapter_inflight
                counts[adapter] = counts.get(adapter, 0) + 1
            if event.prompt and self.prefix_rules.index_blocks:
                view.prefix.record(event.prompt)
        return NOTHING

    def _ended(self, event: RequestEnded) -> Effect:
        view = self.workers.get(event.worker)
        if view is not None:
            view.inflight -= 1
            adapter = event.adapter
            if adapter is not None:
                counts = view.adapter_inflight
                left = counts.get(adapter, 0) - 1
                if left > 0:
                    counts[adapter] = left
                else:
                    counts.pop(adapter, None)
        return NOTHING
