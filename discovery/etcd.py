"""An asyncio etcd client for one fleet: a key prefix, endpoint failover, TLS/auth, typed errors.

aetcd does the gRPC; this layer adds what a long-running service needs and
aetcd leaves out: every key is relative to the fleet's prefix (several fleets
share one etcd), gRPC reconnects within 100-500 ms instead of seconds, every
failure surfaces as one of discovery.errors' classes, and an unanswered call
moves on to the next endpoint. Leases with keepalive live in discovery.lease,
resumable watches in discovery.watch; both are reached from here.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import aetcd
import aetcd.exceptions
import aetcd.rpc
import grpc
import msgspec

from discovery.errors import EtcdAuthFailed, EtcdUnavailable
from discovery.lease import Lease
from discovery.watch import KeyValue, PrefixChange, PrefixState, WatchEvent, watch_changes, watch_prefix

__all__ = [
    "Compare",
    "Delete",
    "EtcdClient",
    "KeyValue",
    "Lease",
    "PrefixState",
    "Put",
    "TlsConfig",
    "TxnResult",
    "WatchEvent",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

FAST_RECONNECT = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 500,
}
"""Without these a restarted etcd is noticed only after 1-4.5 s of gRPC backoff."""

CHANNEL_OPTIONS = {**FAST_RECONNECT, "grpc.max_receive_message_length": 64 * 2**20}
"""gRPC refuses replies over 4 MiB by default; listings are paged (`RANGE_PAGE`), but one page of large worker
records (each lists its cache entries) may still pass that."""

RANGE_PAGE = 1000
"""Keys per range request. A listing of 100,000 catalog entries (19 MB) in one reply is past any sane message
limit; pages read at the first page's revision are one consistent snapshot."""


AUTH_REFUSALS = re.compile(r"authentication failed|user name is empty|permission denied")
STALE_TOKEN = "invalid auth token"
"""etcd reports auth refusals as INVALID_ARGUMENT / PERMISSION_DENIED, which aetcd does not tell apart."""


class TlsConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Files for a TLS connection; None means system roots / no client certificate."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


class Compare(msgspec.Struct, frozen=True):
    """`target(key) == expected` (create/mod revision, or value) inside a transaction."""

    key: str
    target: Literal["create", "mod", "value"]
    expected: int | bytes


class Put(msgspec.Struct, frozen=True):
    key: str
    value: bytes
    lease: int = 0


class Delete(msgspec.Struct, frozen=True):
    key: str


class TxnResult(msgspec.Struct, frozen=True):
    succeeded: bool
    revision: int


class _Channel(aetcd.Client):
    """aetcd's client on a channel of our choosing (TLS or not); everything else is aetcd's."""

    # Set by aetcd.Client.__init__ (untyped), read before `connect` assigns it here.
    _is_connecting: bool

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._target = target
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        if self._is_connecting:
            async with asyncio.timeout(self._connect_wait_timeout):
                await self._connected.wait()
            return
        self._is_connecting = True
        try:
            options = list(self._options.items())
            self.channel = (aetcd.rpc.secure_channel(self._target, self._credentials, options=options)
                            if self._credentials is not None
                            else aetcd.rpc.insecure_channel(self._target, options=options))
            if self._username is not None:
                self.auth_stub = aetcd.rpc.AuthStub(self.channel)
                request = aetcd.rpc.AuthenticateRequest(name=self._username, password=self._password)
                try:
                    reply = await self.auth_stub.Authenticate(request, timeout=self._timeout)
                except aetcd.rpc.AioRpcError as exc:
                    await self.channel.close()
                    self._init_channel_attrs()
                    aetcd.exceptions._handle_exception(exc)
                self.metadata = (("token", reply.token),)
            self.kvstub = aetcd.rpc.KVStub(self.channel)
            self.clusterstub = aetcd.rpc.ClusterStub(self.channel)
            self.leasestub = aetcd.rpc.LeaseStub(self.channel)
            self.maintenancestub = aetcd.rpc.MaintenanceStub(self.channel)
            self._watcher = aetcd.Watcher(aetcd.rpc.WatchStub(self.channel), timeout=self._timeout,
                                          metadata=self.metadata)
            self._connected.set()
        finally:
            self._is_connecting = False


def parse_endpoint(endpoint: str) -> tuple[str, bool]:
    """'http://h:2379' -> ('h:2379', tls=False); 'https://…' asks for TLS; a bare 'h:p' is plain."""
    if "://" not in endpoint:
        return endpoint.strip().rstrip("/"), False
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an etcd endpoint: {endpoint!r} (want http://host:port or https://host:port)")
    return f"{parts.hostname}:{parts.port or 2379}", parts.scheme == "https"


class EtcdClient:
    """One fleet's view of etcd. Create with `await EtcdClient.connect(...)`; `await close()` at the end."""

    def __init__(self, endpoints: Sequence[str], prefix: str = "/lora-router", tls: TlsConfig | None = None,
                 user: str | None = None, password: str | None = None, timeout_s: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if (user is None) != (password is None):
            raise ValueError("etcd user and password go together")
        self._targets = [parse_endpoint(e) for e in endpoints]
        self._tls = tls
        self._user = user
        self._password = password
        self._timeout_s = timeout_s
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self._index = 0
        self._client = self._new_client()
        self._closing: list[asyncio.Task[None]] = []
        self.closed = False

    @classmethod
    async def connect(cls, endpoints: Sequence[str], prefix: str = "/lora-router", tls: TlsConfig | None = None,
                      user: str | None = None, password: str | None = None,
                      timeout_s: float = 5.0) -> EtcdClient:
        """A client whose first endpoint is reachable now; raises EtcdUnavailable / EtcdAuthFailed if not."""
        client = cls(endpoints, prefix, tls, user, password, timeout_s)
        try:
            await client.revision()
        except BaseException:
            await client.close()
            raise
        return client

    @property
    def endpoint(self) -> str:
        return self._targets[self._index][0]

    def _new_client(self) -> _Channel:
        target, https = self._targets[self._index]
        tls = self._tls if self._tls is not None else (TlsConfig() if https else None)
        return _Channel(target, tls.credentials() if tls else None, username=self._user, password=self._password,
                        timeout=self._timeout_s, options=CHANNEL_OPTIONS)

    def full_key(self, key: str) -> bytes:
        return f"{self.prefix}/{key}".encode()

    def relative_key(self, full: bytes) -> str:
        return full.decode()[len(self.prefix) + 1:]

    def _kv(self, kv: aetcd.rtypes.KeyValue | aetcd.rpc.KeyValue) -> KeyValue:
        return KeyValue(self.relative_key(kv.key), kv.value, kv.create_revision, kv.mod_revision, kv.version,
                        kv.lease)

    async def call(self, op: Callable[[aetcd.Client], Awaitable[T]]) -> T:
        """Run one aetcd call, turning its failures into ours; an unreachable endpoint hands over to the next."""
        if self.closed:
            raise EtcdUnavailable("etcd client is closed")
        client = self._client
        try:
            return await op(client)
        except (TimeoutError, aetcd.exceptions.ClientError, aetcd.rpc.AioRpcError, OSError) as exc:
            text = str(exc)
            if self._user is not None and STALE_TOKEN in text:
                self._replace(client, self._index)
                raise EtcdUnavailable(f"etcd at {self.endpoint} forgot our auth token (restarted?): "
                                      "authenticating again") from None
            if isinstance(exc, aetcd.exceptions.UnauthenticatedError) or AUTH_REFUSALS.search(text):
                raise EtcdAuthFailed(f"etcd at {self.endpoint} refused the credentials: {exc}") from None
            if len(self._targets) > 1:
                self._replace(client, (self._index + 1) % len(self._targets))
            raise EtcdUnavailable(f"etcd at {self.endpoint}: {type(exc).__name__}: {exc}") from None

    def _replace(self, failed: aetcd.Client, index: int) -> None:
        """A fresh aetcd client on endpoint `index` (the next one on fail-over; the same one to re-authenticate)."""
        if failed is not self._client:
            return
        self._index = index
        self._client = self._new_client()
        self._closing.append(asyncio.create_task(failed.close()))
        log.warning("etcd: new connection to %s", self.endpoint)

    # -- key-value ----------------------------------------------------------------------------------------
    async def revision(self) -> int:
        """The store's current revision (also a cheap liveness check)."""
        got = await self.call(lambda c: c.get_prefix(self.full_key("\x00"), keys_only=True))
        return got.header.revision

    async def get(self, key: str) -> KeyValue | None:
        got = await self.call(lambda c: c.get(self.full_key(key)))
        return None if got is None else self._kv(got)

    async def range(self, key_prefix: str) -> tuple[int, dict[str, KeyValue]]:
        """Every key under `key_prefix` and the revision the read was taken at, read `RANGE_PAGE` keys at a time."""
        start = self.full_key(key_prefix)
        end = aetcd.utils.prefix_range_end(start)
        revision = 0
        kvs: dict[str, KeyValue] = {}
        while True:
            async def page(c: aetcd.Client, start: bytes = start, revision: int = revision) -> aetcd.rpc.RangeResponse:
                await c.connect()
                request = aetcd.rpc.RangeRequest(key=start, range_end=end, limit=RANGE_PAGE, revision=revision,
                                                 sort_order=aetcd.rpc.RangeRequest.ASCEND,
                                                 sort_target=aetcd.rpc.RangeRequest.KEY)
                return await c.kvstub.Range(request, timeout=c._timeout, metadata=c.metadata)

            reply = await self.call(page)
            revision = revision or reply.header.revision
            for raw in reply.kvs:
                kv = self._kv(raw)
                kvs[kv.key] = kv
            if not reply.more or not reply.kvs:
                return revision, kvs
            start = reply.kvs[-1].key + b"\x00"

    async def put(self, key: str, value: bytes, lease: int = 0) -> int:
        """Write one key; returns the revision of the write."""
        done = await self.call(lambda c: c.put(self.full_key(key), value, lease=lease or None))
        return done.header.revision

    async def delete(self, key: str) -> bool:
        done = await self.call(lambda c: c.delete(self.full_key(key)))
        return done is not None and done.deleted > 0

    async def txn(self, compare: Sequence[Compare], success: Sequence[Put | Delete],
                  failure: Sequence[Put | Delete] = ()) -> TxnResult:
        """All-or-nothing: `success` ops if every comparison holds, else `failure` ops."""
        async def run(c: aetcd.Client) -> TxnResult:
            t = c.transactions
            targets = {"create": t.create, "mod": t.mod, "value": t.value}
            checks = [targets[x.target](self.full_key(x.key)) == x.expected for x in compare]

            def ops(items: Sequence[Put | Delete]) -> list[object]:
                return [t.put(self.full_key(o.key), o.value, lease=o.lease or None) if isinstance(o, Put)
                        else t.delete(self.full_key(o.key)) for o in items]

            request = aetcd.rpc.TxnRequest(compare=[x.build_message() for x in checks],
                                           success=c._ops_to_requests(ops(success)),
                                           failure=c._ops_to_requests(ops(failure)))
            reply = await c.kvstub.Txn(request, timeout=c._timeout, metadata=c.metadata)
            return TxnResult(reply.succeeded, reply.header.revision)

        return await self.call(run)

    async def compact(self, revision: int) -> None:
        await self.call(lambda c: c.compact(revision, physical=True))

    # -- leases and watches -------------------------------------------------------------------------------
    async def grant(self, ttl: int) -> int:
        """A new lease id with `ttl` seconds to live."""
        lease = await self.call(lambda c: c.lease(ttl))
        return int(lease.id)

    async def refresh(self, lease_id: int) -> int:
        """One keepalive; the TTL left, 0 when the lease is gone (expired or revoked)."""
        reply = await self.call(lambda c: c.refresh_lease(lease_id))
        return int(reply.TTL) if reply is not None else 0

    async def revoke(self, lease_id: int) -> None:
        await self.call(lambda c: c.revoke_lease(lease_id))

    def lease(self, ttl: int, on_regranted: Callable[[Lease], Awaitable[None]] | None = None) -> Lease:
        """A Lease (not yet granted): `await lease.start()` grants it and starts its keepalive loop."""
        return Lease(self, ttl, on_regranted)

    async def raw_watch(self, key_prefix: str, start_revision: int) -> aetcd.rtypes.Watch:
        """aetcd's watch from `start_revision` (inclusive); discovery.watch drives and resumes it."""
        full = self.full_key(key_prefix)
        return await self.call(lambda c: c.watch_prefix(full, start_revision=start_revision))

    def event(self, raw: aetcd.rtypes.Event) -> WatchEvent:
        kv = self._kv(raw.kv)
        return WatchEvent("put" if raw.kind == "PUT" else "delete", kv.key, kv.mod_revision,
                          kv if raw.kind == "PUT" else None)

    def watch_prefix(self, key_prefix: str, resume: PrefixState | None = None) -> AsyncIterator[PrefixState]:
        """States of `key_prefix` after each change: a full list first, then every event, across restarts.

        `resume` continues from a state an earlier watch yielded (revision + 1);
        if that history was compacted, a full re-list (resync=True) comes first.
        """
        return watch_prefix(self, key_prefix, resume)

    def watch_changes(self, key_prefix: str, after: int | None = None) -> AsyncIterator[PrefixChange]:
        """A listing of `key_prefix`, then each event, across restarts (a re-list after compaction);
        with `after`, the events after that revision instead of a first listing."""
        return watch_changes(self, key_prefix, after)

    async def close(self) -> None:
        self.closed = True
        await self._client.close()
        await asyncio.gather(*self._closing, return_exceptions=True)
