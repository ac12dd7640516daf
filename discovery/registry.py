"""The worker registry: leased records under workers/, and membership snapshots for the routers.

A registration lives exactly as long as its lease: a registrar that dies stops
refreshing and etcd deletes the record after the TTL; one that stops cleanly
revokes the lease and the record goes at once. Watchers get the whole
membership after every change (ordered by id), never a delta, so a router that
missed nothing and one that just re-listed after compaction hold the same view.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import msgspec

from discovery.errors import MalformedRecord
from discovery.etcd import EtcdClient, KeyValue, PrefixState
from discovery.lease import Lease
from discovery.records import decode_worker, encode
from router.core.records import WorkerRecord

log = logging.getLogger(__name__)

WORKERS = "workers/"


class Membership(msgspec.Struct, frozen=True):
    """Every registered worker as of etcd revision `revision`, ordered by id."""

    revision: int
    workers: dict[str, WorkerRecord]


class Registration:
    """One worker's leased record; `update()` re-puts it, `withdraw()` removes it at once."""

    def __init__(self, lease: Lease, record: WorkerRecord) -> None:
        self.lease = lease
        self.record = record

    @property
    def key(self) -> str:
        return WORKERS + self.record.id

    async def update(self, record: WorkerRecord) -> None:
        """Replace the record (e.g. a new instance id after the worker restarted); same key, same lease."""
        if record.id != self.record.id:
            raise ValueError("a registration keeps its worker id; withdraw and register again instead")
        self.record = record
        await self.lease.put(self.key, encode(record))

    async def withdraw(self) -> None:
        """Revoke the lease: the record disappears from every watcher now, not after the TTL."""
        await self.lease.revoke()


class WorkerRegistry:
    def __init__(self, client: EtcdClient) -> None:
        self._client = client

    async def register(self, record: WorkerRecord, ttl: int) -> Registration:
        """Put `record` under a new lease kept alive by a task; a lost lease is re-created with the record."""
        if record.registered_at == 0.0:
            record = msgspec.structs.replace(record, registered_at=time.time())
        lease = await self._client.lease(ttl).start()
        registration = Registration(lease, record)
        try:
            await lease.put(registration.key, encode(record))
        except BaseException:
            await lease.stop()
            raise
        return registration

    async def read(self) -> Membership:
        revision, kvs = await self._client.range(WORKERS)
        return Membership(revision, _Decoder().decode_all(kvs))

    async def watch(self) -> AsyncIterator[Membership]:
        """Membership after each change that alters it; malformed records are skipped (warned once each)."""
        decoder = _Decoder()
        last: dict[str, WorkerRecord] | None = None
        state: PrefixState
        async for state in self._client.watch_prefix(WORKERS):
            workers = decoder.decode_all(state.kvs)
            if workers != last:
                last = workers
                yield Membership(state.revision, workers)


class _Decoder:
    """Decodes each (key, mod revision) once: one warning per bad value, not one per snapshot."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, WorkerRecord | None]] = {}

    def decode_all(self, kvs: dict[str, KeyValue]) -> dict[str, WorkerRecord]:
        workers: dict[str, WorkerRecord] = {}
        for key in sorted(kvs):
            record = self._decode(kvs[key])
            if record is not None:
                workers[record.id] = record
        for key in set(self._seen) - kvs.keys():
            del self._seen[key]
        return workers

    def _decode(self, kv: KeyValue) -> WorkerRecord | None:
        cached = self._seen.get(kv.key)
        if cached is not None and cached[0] == kv.mod_revision:
            return cached[1]
        try:
            record: WorkerRecord | None = decode_worker(kv.key, kv.value)
        except MalformedRecord as exc:
            log.warning("skipping malformed worker record: %s", exc)
            record = None
        self._seen[kv.key] = (kv.mod_revision, record)
        return record
