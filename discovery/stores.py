"""The fleet's shared state in etcd: adapter catalog, placement table, per-router demand.

- The catalog (adapters/{name}) is durable: adapters stay known across every restart.
- The placement (a header and one key per replica set, under `placement/`) is written only by the
  leader, each write transactions that also check the leader key is still this leader's (fence) and
  that the header is the one this writer last saw; so a deposed leader, or a leader racing a stale
  view, is refused by etcd itself.
- Demand (load/{router_id}) is leased per router: a dead router's demand
  disappears with its lease instead of inflating the sums for ever.
Malformed values are skipped with one warning each, never raised into a watcher.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Mapping

import msgspec
import xxhash

from allocator.model import Demand, Placement, ReplicaSet
from discovery.election import Fence, LeaderElection
from discovery.errors import FencingFailed, MalformedRecord, NotLeader
from discovery.etcd import Compare, Delete, EtcdClient, KeyValue, Put, WatchEvent
from discovery.lease import Lease
from discovery.records import decode, encode
from router.core.records import AdapterFailure, AdapterRecord, DemandReport, PlacementHeader

log = logging.getLogger(__name__)

ADAPTERS = "adapters/"
PLACEMENT = "placement"
"""The prefix of the placement's keys, and the single document an older version wrote there."""
EPOCH = "placement/epoch"
SETS = "placement/sets/"
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
        """The whole catalog after each change (a copy each time), each change decoded once: a fleet of
        100,000 adapters costs a dict copy per admin write, not 100,000 decodes."""
        catalog: dict[str, AdapterRecord] = {}
        async for change in self._client.watch_changes(ADAPTERS):
            if change.listing is not None:
                catalog = _adapters(change.listing, self._warned)
            else:
                event = change.event
                assert event is not None
                name = event.key.removeprefix(ADAPTERS)
                record = None if event.kv is None else _adapters({event.key: event.kv}, self._warned).get(name)
                if record is None:
                    catalog.pop(name, None)
                else:
                    catalog[name] = record
            yield dict(catalog)


def _unmarked(record: AdapterRecord) -> AdapterRecord:
    return msgspec.structs.replace(record, failed=None)


class PlacementStore:
    """The placement, one key per replica set; `write()` is the leader's fenced compare-and-swap of what changed.

    Layout (docs/design.md): `placement/epoch` holds the header, `placement/sets/{adapter}` each replica set.
    Why per adapter: a worker joining 10,000 others moves about 1/10,000 of the assignments, and only those
    keys are written and sent to every router's watch, where one document of 100,000 sets (several MB, past
    etcd's request limit) was rewritten and re-read whole. An epoch's changes go in transactions of at most
    `ops_per_txn` puts and deletes (etcd refuses more than `--max-txn-ops`, 128 by default) and
    `bytes_per_txn` bytes (under `--max-request-bytes`, 1.5 MiB); every one is fenced by the leader key and
    by the header's revision as this writer last saw it, and writes the header, the last with `complete`.
    A placement written by an older version as the single document `placement` is read as it is and
    rewritten in this layout by the next write, which deletes it.
    """

    def __init__(self, client: EtcdClient, ops_per_txn: int = 100, bytes_per_txn: int = 512 * 1024) -> None:
        self._client = client
        self._warned: set[tuple[str, int]] = set()
        self._ops_per_txn = ops_per_txn
        self._bytes_per_txn = bytes_per_txn
        self.seen_revision: int | None = None
        """Mod revision of the header this writer last read or wrote (0: absent); None before the first read."""
        self._written: dict[str, ReplicaSet] = {}
        """The replica sets in etcd as of `seen_revision`: what the next write is a change from."""
        self.legacy = False
        """The placement in etcd is the single document of an older version: the next write migrates it."""

    async def read(self) -> Placement | None:
        """What etcd holds now (complete or not: a leader that died mid-epoch leaves a mix of two, each set
        whole); None when there is no placement yet."""
        _, kvs = await self._client.range(PLACEMENT)
        view = _PlacementView(self._warned)
        view.load(kvs)
        self.seen_revision = kvs[EPOCH].mod_revision if EPOCH in kvs else 0
        self._written = dict(view.sets)
        self.legacy = view.legacy is not None
        return view.placement(complete_only=False)

    async def write(self, placement: Placement, election: LeaderElection) -> int:
        """Write as the current leader; the new revision, or NotLeader / FencingFailed."""
        fence = election.fence
        if fence is None or not election.is_leader:
            raise NotLeader(f"{election.candidate_id} is not the leader (leader: {election.leader_id})")
        return await self.write_fenced(placement, fence)

    async def write_fenced(self, placement: Placement, fence: Fence) -> int:
        """The sets that differ from what this writer last saw, in fenced transactions; the last revision.

        A refused transaction (leadership moved, or someone else wrote the placement since) re-reads and
        raises FencingFailed: what earlier transactions of this epoch wrote stays, each set whole, and the
        header says the epoch is incomplete until a leader completes one.
        """
        if self.seen_revision is None:
            await self.read()
        assert self.seen_revision is not None
        ops: list[Put | Delete] = [Put(SETS + name, encode(rs)) for name, rs in placement.replica_sets.items()
                                   if self._written.get(name) != rs]
        ops += [Delete(SETS + name) for name in self._written.keys() - placement.replica_sets.keys()]
        if self.legacy:
            ops.append(Delete(PLACEMENT))
        batches = _batches(ops, self._ops_per_txn, self._bytes_per_txn) or [[]]
        for i, batch in enumerate(batches):
            header = PlacementHeader(epoch=placement.epoch, computed_at=placement.computed_at,
                                     complete=i == len(batches) - 1)
            result = await self._client.txn([*fence.compares(), Compare(EPOCH, "mod", self.seen_revision)],
                                            [*batch, Put(EPOCH, encode(header))])
            if not result.succeeded:
                await self.read()
                raise FencingFailed(f"placement epoch {placement.epoch} refused: {fence.candidate_id} no longer "
                                    f"holds leadership {fence.create_revision}, or the placement changed since "
                                    "it was read")
            self.seen_revision = result.revision
            for op in batch:
                if op.key.startswith(SETS):  # (the legacy document's delete is the one other op)
                    name = op.key.removeprefix(SETS)
                    if isinstance(op, Put):
                        self._written[name] = placement.replica_sets[name]
                    else:
                        self._written.pop(name, None)
        self.legacy = False
        return self.seen_revision

    async def watch(self) -> AsyncIterator[Placement]:
        """Each complete placement (malformed sets skipped); nothing until the first one exists.

        Applied change by change from the watch: a join that moves ten sets costs ten decodes, not a
        re-read of every set.
        """
        view = _PlacementView(self._warned)
        async for change in self._client.watch_changes(PLACEMENT):
            if change.listing is not None:
                view.load(change.listing)
            else:
                assert change.event is not None
                if not view.apply(change.event):
                    continue
            self.legacy = view.header is None and view.legacy is not None
            placement = view.placement(complete_only=True)
            if placement is not None:
                yield placement


def _batches(ops: list[Put | Delete], max_ops: int, max_bytes: int) -> list[list[Put | Delete]]:
    """`ops` cut into runs of at most `max_ops` operations and about `max_bytes` bytes each."""
    out: list[list[Put | Delete]] = []
    size = 0
    for op in ops:
        weight = len(op.key) + (len(op.value) if isinstance(op, Put) else 0)
        if not out or len(out[-1]) >= max_ops or (out[-1] and size + weight > max_bytes):
            out.append([])
            size = 0
        out[-1].append(op)
        size += weight
    return out


class _PlacementView:
    """A reader's copy of the placement keys, decoded once per change."""

    def __init__(self, warned: set[tuple[str, int]]) -> None:
        self._warned = warned
        self.sets: dict[str, ReplicaSet] = {}
        self.header: PlacementHeader | None = None
        self.legacy: Placement | None = None
        self._revision = 0
        """Mod revision of the header (or of the legacy document) that `placement` last gave."""
        self._given = -1

    def load(self, kvs: Mapping[str, KeyValue]) -> None:
        self.sets, self.header, self.legacy, self._revision, self._given = {}, None, None, 0, -1
        for kv in kvs.values():
            self._put(kv)

    def apply(self, event: WatchEvent) -> bool:
        """Whether the event may complete an epoch (only a write of the header, or of a legacy document, can)."""
        if event.kv is not None:
            self._put(event.kv)
        elif event.key.startswith(SETS):
            self.sets.pop(event.key.removeprefix(SETS), None)
        elif event.key == PLACEMENT:
            self.legacy = None
        return event.key in (EPOCH, PLACEMENT)

    def _put(self, kv: KeyValue) -> None:
        if kv.key.startswith(SETS):
            replica_set = _decoded(kv, ReplicaSet, self._warned)
            if isinstance(replica_set, ReplicaSet):
                self.sets[kv.key.removeprefix(SETS)] = replica_set
            else:
                self.sets.pop(kv.key.removeprefix(SETS), None)
        elif kv.key == EPOCH:
            header = _decoded(kv, PlacementHeader, self._warned)
            if isinstance(header, PlacementHeader):
                self.header, self._revision = header, kv.mod_revision
        elif kv.key == PLACEMENT and self.header is None:
            legacy = _decoded(kv, Placement, self._warned)
            if isinstance(legacy, Placement):
                self.legacy, self._revision = legacy, kv.mod_revision

    def placement(self, complete_only: bool) -> Placement | None:
        """The placement the keys hold. With `complete_only`: None while an epoch is being written, and for
        a header revision already given (a header is written again only with new content)."""
        header = self.header
        if complete_only and (self._given == self._revision or (header is not None and not header.complete)):
            return None
        self._given = self._revision
        if header is None:
            return self.legacy
        sets = dict(self.sets)
        return Placement(epoch=header.epoch, computed_at=header.computed_at, replica_sets=sets,
                         unplaced=tuple(sorted(n for n, rs in sets.items() if len(rs.workers) < rs.replicas)))


class DemandStore:
    """Per-router demand reports under one lease per router (created on the first publish).

    A report is cut into chunks of at most `CHUNK_ADAPTERS` adapters, by a hash of the name: the first
    under `load/{router_id}`, the others under `load/{router_id}/{k}`. Why: one router seeing traffic for
    100,000 adapters reports ~4 MB, past etcd's 1.5 MiB request limit, and every publish failed. Estimates
    go out rounded to three significant digits, and a chunk whose rounded estimates did not change since
    this router last wrote it is not written again (an idle fleet's decayed estimates stop changing).
    """

    def __init__(self, client: EtcdClient, ttl: int = 10) -> None:
        self._client = client
        self._ttl = ttl
        self._lease: Lease | None = None
        self._warned: set[tuple[str, int]] = set()
        self._written: dict[str, dict[str, Demand]] = {}
        """key -> the rounded estimates last written there (under the current lease)."""

    async def publish(self, router_id: str, adapters: Mapping[str, Demand], at: float | None = None) -> None:
        """Replace this router's report; it vanishes `ttl` seconds after this router stops refreshing."""
        if self._lease is None:
            self._lease = await self._client.lease(self._ttl).start()
            self._written = {}
        lease = self._lease
        when = time.time() if at is None else at
        chunks = _chunks({name: Demand(rps=_rounded(d.rps), inflight=_rounded(d.inflight))
                          for name, d in adapters.items()})
        keys = [LOAD + router_id + (f"/{k}" if k else "") for k in range(len(chunks))]
        for key, chunk in zip(keys, chunks, strict=True):
            if self._written.get(key) != chunk or key not in lease.owned:
                await lease.put(key, encode(DemandReport(router_id=router_id, at=when, adapters=chunk)))
                self._written[key] = chunk
        for key in [k for k in self._written if k not in keys]:
            await lease.release(key)
            del self._written[key]

    async def read_all(self) -> dict[str, DemandReport]:
        """Every live router's report, by router id (its chunks put back together)."""
        _, kvs = await self._client.range(LOAD)
        reports: dict[str, DemandReport] = {}
        for key in sorted(kvs):
            report = _decoded(kvs[key], DemandReport, self._warned)
            if not isinstance(report, DemandReport):
                continue
            own = LOAD + report.router_id
            chunk = key.removeprefix(own + "/")
            if key != own and not (key.startswith(own + "/") and chunk.isdigit()):
                continue  # another router's key, or not a report
            have = reports.get(report.router_id)
            if have is None:
                reports[report.router_id] = report
            else:
                reports[report.router_id] = DemandReport(router_id=have.router_id, at=max(have.at, report.at),
                                                         adapters={**have.adapters, **report.adapters})
        return reports

    async def close(self) -> None:
        """Withdraw this router's report now."""
        if self._lease is not None:
            lease, self._lease = self._lease, None
            await lease.revoke()


CHUNK_ADAPTERS = 2000
"""Adapters per demand-report key: about 100 KB, well under etcd's request limit."""


def _rounded(x: float) -> float:
    return float(f"{x:.3g}")


def _chunks(adapters: Mapping[str, Demand]) -> list[dict[str, Demand]]:
    """The report cut by name hash into as few chunks as hold `CHUNK_ADAPTERS` each (a power of two, so
    that a growing report re-cuts rarely); always at least one, so that an empty report is written too."""
    count = 1
    while count * CHUNK_ADAPTERS < len(adapters):
        count *= 2
    chunks: list[dict[str, Demand]] = [{} for _ in range(count)]
    for name in sorted(adapters):
        chunks[xxhash.xxh64_intdigest(name.encode()) % count if count > 1 else 0][name] = adapters[name]
    return chunks


def sum_demand(reports: Mapping[str, DemandReport]) -> dict[str, Demand]:
    """Every router's demand, summed per adapter (pure)."""
    total: dict[str, Demand] = {}
    for report in reports.values():
        for name, demand in report.adapters.items():
            have = total.get(name, Demand())
            total[name] = Demand(rps=have.rps + demand.rps, inflight=have.inflight + demand.inflight)
    return total
