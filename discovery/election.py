"""Leader election among routers: one leased key, created only if absent, watched by every candidate.

Who leads is decided by etcd alone: the candidate whose transaction created
the `leader` key (create revision 0 -> put, under its lease) leads until that
key goes (lease expired, revoked, or deleted). Every candidate watches the key,
so each knows the current leader; when it disappears all of them try the
same transaction and exactly one wins. A leader that dies stops refreshing,
etcd expires the lease after the TTL (checked every 0.5 s) and the key's
deletion wakes the others: takeover within TTL + 1 s.

The leader's `fence` (the key's create revision) goes into every leader-only
write as a transaction comparison, so a deposed leader that has not noticed
yet has its write refused by etcd rather than trusted. Locally `is_leader`
also turns False as soon as the lease can no longer be known alive (no
refresh acknowledged for a TTL), before etcd would hand leadership on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec

from discovery.errors import EtcdUnavailable
from discovery.etcd import Compare, EtcdClient, KeyValue, Put
from discovery.lease import RETRY_S, Lease

log = logging.getLogger(__name__)

LEADER = "leader"


class Fence(msgspec.Struct, frozen=True):
    """Proof of leadership for a fenced write: the leader key must still be this candidate's, this creation."""

    candidate_id: str
    create_revision: int

    def compares(self) -> list[Compare]:
        return [Compare(LEADER, "create", self.create_revision),
                Compare(LEADER, "value", self.candidate_id.encode())]


class LeaderElection:
    """`run()` campaigns for as long as it runs; read `is_leader`, `leader_id`, `fence`; `resign()` to step down."""

    def __init__(self, client: EtcdClient, candidate_id: str, ttl: float = 10) -> None:
        self._client = client
        self.candidate_id = candidate_id
        self.ttl = max(1, round(ttl))
        self.leader_id: str | None = None
        """The leader as this candidate last observed it (None while the key is absent)."""
        self._fence: Fence | None = None
        self._lease: Lease | None = None
        self._listeners: list[Callable[[LeaderElection], None]] = []
        self.changed = asyncio.Event()
        """Set on every change of leader; whoever waits on it clears it."""
        self.terms = 0
        """How many times this candidate became leader."""

    @property
    def is_leader(self) -> bool:
        return self._fence is not None and self._lease is not None and self._lease.alive

    @property
    def fence(self) -> Fence | None:
        """The fence of this candidate's leadership as last observed; None when it is not the leader."""
        return self._fence

    def add_listener(self, listener: Callable[[LeaderElection], None]) -> None:
        """Called (synchronously, on the event loop) whenever the observed leader changes."""
        self._listeners.append(listener)

    async def run(self) -> None:
        """Campaign forever: survives etcd outages and lease loss; cancel it (then `resign()`) to stop."""
        outage = False
        while True:
            try:
                if self._lease is None:
                    self._lease = await self._client.lease(self.ttl).start()
                async for state in self._client.watch_prefix(LEADER):
                    current = state.kvs.get(LEADER)
                    self._observe(current)
                    if current is None:
                        await self._campaign()
                    outage = False
            except EtcdUnavailable as exc:
                if not outage:
                    log.warning("election: etcd unavailable, retrying: %s", exc)
                outage = True
                await asyncio.sleep(RETRY_S)

    async def _campaign(self) -> None:
        assert self._lease is not None
        result = await self._client.txn([Compare(LEADER, "create", 0)],
                                        [Put(LEADER, self.candidate_id.encode(), self._lease.id)])
        if result.succeeded:
            log.info("election: %s campaigned and won at revision %d", self.candidate_id, result.revision)

    def _observe(self, kv: KeyValue | None) -> None:
        leader = kv.value.decode(errors="replace") if kv is not None else None
        mine = (kv is not None and leader == self.candidate_id and self._lease is not None
                and kv.lease == self._lease.id)
        fence = Fence(self.candidate_id, kv.create_revision) if mine and kv is not None else None
        if leader == self.leader_id and fence == self._fence:
            return
        if fence is not None and self._fence is None:
            self.terms += 1
            log.info("election: %s is now the leader (fence %d)", self.candidate_id, fence.create_revision)
        elif fence is None and self._fence is not None:
            log.warning("election: %s lost leadership; leader is now %s", self.candidate_id, leader)
        self.leader_id = leader
        self._fence = fence
        self.changed.set()
        for listener in self._listeners:
            listener(self)

    async def resign(self) -> None:
        """Step down now (revoking the lease deletes the key, waking the other candidates)."""
        lease, self._lease = self._lease, None
        self._observe(None)
        if lease is not None:
            try:
                await lease.revoke()
            except EtcdUnavailable as exc:
                log.warning("election: could not revoke the lease on resign (it expires in %ds): %s", self.ttl, exc)
