"""The router's in-memory view of the fleet: who is up, who holds what, where things belong.

Watchers (membership, catalog, placement) and the reconciler write it; the
request path only reads it. Everything runs on one event loop, so plain sets
and dicts suffice; the holder index is kept incrementally so that picking a
worker is O(replicas), never O(fleet).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from allocator.model import Placement
from discovery.records import AdapterRecord, WorkerRecord
from router.upstream import Origin, origin_of


class WorkerView:
    """One worker as this router sees it; mutable, owned by the event loop."""

    __slots__ = ("adapter_inflight", "draining", "failures", "healthy", "holds", "inflight", "probe_at", "record")

    def __init__(self, record: WorkerRecord) -> None:
        self.record = record
        self.healthy = True
        self.failures = 0
        self.inflight = 0
        self.adapter_inflight: dict[str, int] = {}
        """Requests in flight here per adapter: a drain waits for its adapter's count to reach 0."""
        self.holds: set[str] = set()
        """Adapters the worker listed in /v1/models (or confirmed by a load)."""
        self.draining: set[str] = set()
        """Held adapters that get no new requests because the placement dropped them here."""
        self.probe_at = 0.0

    def begin(self, adapter: str | None) -> None:
        self.inflight += 1
        if adapter is not None:
            self.adapter_inflight[adapter] = self.adapter_inflight.get(adapter, 0) + 1

    def end(self, adapter: str | None) -> None:
        self.inflight -= 1
        if adapter is not None:
            left = self.adapter_inflight[adapter] - 1
            if left:
                self.adapter_inflight[adapter] = left
            else:
                del self.adapter_inflight[adapter]

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def url(self) -> str:
        return self.record.url

    @property
    def origin(self) -> Origin:
        return origin_of(self.record.url)

    @property
    def max_loras(self) -> int | None:
        return self.record.max_loras

    @property
    def max_seqs(self) -> int | None:
        """vLLM shows no max_num_seqs a registrar could read: not known, not checked."""
        return None


class MembershipChange:
    __slots__ = ("added", "removed", "restarted")

    def __init__(self, added: list[str], removed: list[str], restarted: list[str]) -> None:
        self.added = added
        self.removed = removed
        self.restarted = restarted
        """Workers whose instance id changed: they lost every runtime-loaded adapter."""

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.restarted)


class Fleet:
    def __init__(self) -> None:
        self.workers: dict[str, WorkerView] = {}
        self.catalog: dict[str, AdapterRecord] = {}
        self.placement = Placement()
        self._holders: dict[str, set[str]] = {}
        self._bases: frozenset[str] = frozenset()
        self.membership_revision = 0

    # -- membership -------------------------------------------------------------------------
    def set_membership(self, records: Mapping[str, WorkerRecord]) -> MembershipChange:
        added = [wid for wid in records if wid not in self.workers]
        removed = [wid for wid in self.workers if wid not in records]
        restarted: list[str] = []
        for wid in removed:
            self._forget_holdings(self.workers.pop(wid))
        for wid, record in records.items():
            view = self.workers.get(wid)
            if view is None:
                self.workers[wid] = WorkerView(record)
                continue
            if view.record.instance != record.instance:
                restarted.append(wid)
                self._forget_holdings(view)
                view.healthy = True
                view.failures = 0
            view.record = record
        self._bases = frozenset(b for v in self.workers.values() for b in v.record.base_models)
        self.membership_revision += 1
        return MembershipChange(added, removed, restarted)

    def bases(self) -> frozenset[str]:
        """Every base model some worker serves; kept with the membership, read on every request."""
        return self._bases

    # -- holdings ---------------------------------------------------------------------------
    def set_holdings(self, worker_id: str, adapters: Iterable[str]) -> None:
        """Replace what a worker holds with what its /v1/models just listed."""
        view = self.workers.get(worker_id)
        if view is None:
            return
        new = set(adapters)
        for name in view.holds - new:
            self._unindex(name, worker_id)
        for name in new - view.holds:
            if name not in view.draining:
                self._holders.setdefault(name, set()).add(worker_id)
        view.holds = new
        view.draining &= new

    def add_holding(self, worker_id: str, adapter: str) -> None:
        view = self.workers.get(worker_id)
        if view is None:
            return
        view.holds.add(adapter)
        view.draining.discard(adapter)
        self._holders.setdefault(adapter, set()).add(worker_id)

    def remove_holding(self, worker_id: str, adapter: str) -> None:
        view = self.workers.get(worker_id)
        if view is not None:
            view.holds.discard(adapter)
            view.draining.discard(adapter)
        self._unindex(adapter, worker_id)

    def start_draining(self, worker_id: str, adapter: str) -> None:
        """Route no new requests for `adapter` to this worker; it still holds it."""
        view = self.workers.get(worker_id)
        if view is not None and adapter in view.holds:
            view.draining.add(adapter)
            self._unindex(adapter, worker_id)

    def holders(self, adapter: str) -> set[str]:
        return self._holders.get(adapter, set())

    def _unindex(self, adapter: str, worker_id: str) -> None:
        ids = self._holders.get(adapter)
        if ids is not None:
            ids.discard(worker_id)
            if not ids:
                del self._holders[adapter]

    def _forget_holdings(self, view: WorkerView) -> None:
        for name in view.holds:
            self._unindex(name, view.id)
        view.holds = set()
        view.draining = set()

    # -- the request path's questions -----------------------------------------------------------
    def routable_holders(self, adapter: str) -> list[WorkerView]:
        """Healthy holders, those in the adapter's replica set first.

        A holder outside the replica set still serves while the set's members
        are loading (make before break); draining holders are never returned.
        """
        ids = self._holders.get(adapter)
        if not ids:
            return []
        healthy = [self.workers[w] for w in ids if self.workers[w].healthy]
        replica_set = self.placement.replica_sets.get(adapter)
        if replica_set is None:
            return healthy
        wanted = set(replica_set.workers)
        placed = [v for v in healthy if v.id in wanted]
        return placed or healthy

    def base_workers(self, base: str) -> list[WorkerView]:
        return [v for v in self.workers.values() if v.healthy and base in v.record.base_models]

    def base_of(self, adapter: str) -> str | None:
        record = self.catalog.get(adapter)
        return record.base_model if record is not None else None
