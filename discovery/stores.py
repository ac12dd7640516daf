"""The fleet's shared state in etcd: adapter catalog, placement table, per-router demand.

- The catalog (adapters/{name}) is durable: adapters stay known across every restart.
- The placement (one document, `placement`) is written only by the leader, each
  write one transaction that also checks the leader key is still this leader's
  (fence) and that the document is the one this writer last saw; so a deposed
  leader, or a leader racing a stale view, is refused by etcd itself.
- Demand (load/{router_id}) is leased per router: a dead router's demand
  disappears with its lease instead of inflating the sums for ever.
Malformed values are skipped with one warning each, never raised into a watcher.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping

import msgspec

from allocator.model import Demand, Placement
from discovery.election import Fence, LeaderElection
from discovery.errors import FencingFailed, MalformedRecord, NotLeader
from discovery.etcd import Compare, EtcdClient, KeyValue, Put
from discovery.lease import Lease
from discovery.records import decode, encode
from router.core.records import AdapterFailure, AdapterRecord, DemandReport

log = logging.getLogger(__name__)

ADAPTERS = "adapters/"
PLACEMENT = "placement"
LOAD = "load/"


def _decoded(kv: KeyValue, kind: type[msgspec.Struct], warned: set[tuple[str, int]]) -> msgspec.Struct | None:
    """The record, or None with one warning per (key, revision) if it does not decode."""
    try:
        return decode(kv.value, kind, kv.key)
    except MalformedRecord as exc:
        if (kv.key, kv.mod_revision) not in warned:
            warned.add((kv.key, kv.mod_revision))
            log.warning("skipping malformed %s: %s", kind.__name__, exc)
        return None


def _adapters(kvs: Mapping[str, KeyValue], warned: set[tuple[str, int]]) -> dict[str, AdapterRecord]:
    out: dict[str, AdapterRecord] = {}
    for key in sorted(kvs):
        record = _decoded(kvs[key], AdapterRecord, warned)
        if isinstance(record, AdapterRecord) and key == ADAPTERS + record.name:
            out[record.name] = record
    return out


class CatalogStore:
    """Adapters known to the fleet; written by admin calls and the config, read by every router."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._warned: set[tuple[str, int]] = set()

    async def put(self, record: AdapterRecord) -> AdapterRecord:
        """Write `record` (stamped with its creation time if it has none); returns what was written."""
        if record.created_at == 0.0:
            record = msgspec.structs.replace(record, created_at=time.time())
        await self._client.put(ADAPTERS + record.name, encode(record))
        return record

    async def get(self, name: str) -> AdapterRecord | None:
        kv = await self._client.get(ADAPTERS + name)
        return None if kv is None else _adapters({kv.key: kv}, self._warned).get(name)

    async def delete(self, name: str) -> bool:
        return await self._client.delete(ADAPTERS + name)

    async def mark_failed(self, seen: AdapterRecord, failed: AdapterFailure | None, fence: Fence) -> bool:
        """Set or clear `failed` on the record, if it is still `seen` (but for the mark) and `fence` still leads.

        One transaction on the key's revision: an admin write in between (a new source) is never
        overwritten with the old one. False when the record changed or is gone, or leadership moved.
        """
        kv = await self._client.get(ADAPTERS + seen.name)
        current = None if kv is None else _adapters({kv.key: kv}, self._warned).get(seen.name)
        if kv is None or current is None or _unmarked(current) != _unmarked(seen):
            return False
        result = await self._client.txn(
            [*fence.compares(), Compare(kv.key, "mod", kv.mod_revision)],
            [Put(kv.key, encode(msgspec.structs.replace(current, failed=failed)))])
        return result.succeeded

    async def list(self) -> dict[str, AdapterRecord]:
        _, kvs = await self._client.range(ADAPTERS)
        return _adapters(kvs, self._warned)

    async def watch(self) -> AsyncIterator[dict[str, AdapterRecord]]:
        """The whole catalog after each change."""
        async for state in self._client.watch_prefix(ADAPTERS):
            yield _adapters(state.kvs, self._warned)


def _unmarked(record: AdapterRecord) -> AdapterRecord:
    return msgspec.structs.replace(record, failed=None)


class PlacementStore:
    """The one placement document; `write()` is the leader's fenced compare-and-swap."""

    def __init__(self, client: EtcdClient) -> None:
        self._client = client
        self._warned: set[tuple[str, int]] = set()
        self.seen_revision: int | None = None
        """Mod revision of the placement this writer last read, watched or wrote (0: absent)."""

    def _take(self, kv: KeyValue | None) -> Placement | None:
        self.seen_revision = 0 if kv is None else kv.mod_revision
        if kv is None:
            return None
        placement = _decoded(kv, Placement, self._warned)
        return placement if isinstance(placement, Placement) else None

    async def read(self) -> Placement | None:
        return self._take(await self._client.get(PLACEMENT))

    async def write(self, placement: Placement, election: LeaderElection) -> int:
        """Write as the current leader; the new revision, or NotLeader / FencingFailed."""
        fence = election.fence
        if fence is None or not election.is_leader:
            raise NotLeader(f"{election.candidate_id} is not the leader (leader: {election.leader_id})")
        return await self.write_fenced(placement, fence)

    async def write_fenced(self, placement: Placement, fence: Fence) -> int:
        """One transaction: leader key still `fence`'s AND placement unchanged since last seen -> put."""
        if self.seen_revision is None:
            await self.read()
        assert self.seen_revision is not None
        result = await self._client.txn([*fence.compares(), Compare(PLACEMENT, "mod", self.seen_revision)],
                                        [Put(PLACEMENT, encode(placement))])
        if not result.succeeded:
            await self.read()
            raise FencingFailed(f"placement epoch {placement.epoch} refused: {fence.candidate_id} no longer holds "
                                f"leadership {fence.create_revision}, or the placement changed since it was read")
        self.seen_revision = result.revision
        return result.revision

    async def watch(self) -> AsyncIterator[Placement]:
        """Each placement written (malformed ones skipped); nothing until the first one exists."""
        async for state in self._client.watch_prefix(PLACEMENT):
            placement = self._take(state.kvs.get(PLACEMENT))
            if placement is not None and (state.resync or any(e.key == PLACEMENT for e in state.events)):
                yield placement


class DemandStore:
    """Per-router demand reports under one lease per router (created on the first publish)."""

    def __init__(self, client: EtcdClient, ttl: int = 10) -> None:
        self._client = client
        self._ttl = ttl
        self._lease: Lease | None = None
        self._warned: set[tuple[str, int]] = set()

    async def publish(self, router_id: str, adapters: Mapping[str, Demand], at: float | None = None) -> None:
        """Replace this router's report; it vanishes `ttl` seconds after this router stops refreshing."""
        if self._lease is None:
            self._lease = await self._client.lease(self._ttl).start()
        report = DemandReport(router_id=router_id, at=time.time() if at is None else at, adapters=dict(adapters))
        await self._lease.put(LOAD + router_id, encode(report))

    async def read_all(self) -> dict[str, DemandReport]:
        """Every live router's report, by router id."""
        _, kvs = await self._client.range(LOAD)
        reports: dict[str, DemandReport] = {}
        for key in sorted(kvs):
            report = _decoded(kvs[key], DemandReport, self._warned)
            if isinstance(report, DemandReport) and key == LOAD + report.router_id:
                reports[report.router_id] = report
        return reports

    async def close(self) -> None:
        """Withdraw this router's report now."""
        if self._lease is not None:
            lease, self._lease = self._lease, None
            await lease.revoke()


def sum_demand(reports: Mapping[str, DemandReport]) -> dict[str, Demand]:
    """Every router's demand, summed per adapter (pure)."""
    total: dict[str, Demand] = {}
    for report in reports.values():
        for name, demand in report.adapters.items():
            have = total.get(name, Demand())
            total[name] = Demand(rps=have.rps + demand.rps, inflight=have.inflight + demand.inflight)
    return total
