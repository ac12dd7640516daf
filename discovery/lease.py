"""A lease kept alive by its own task, and re-created with its keys when etcd lets it lapse.

etcd answers a keepalive for a lease it no longer has with TTL 0 and no error
(expired during an outage, revoked by an operator): the loop checks for that,
grants a new lease, puts back every key this lease owned and tells its owner.
While etcd is unreachable the loop retries every few hundred milliseconds so
that a restarted etcd sees the lease refreshed before it can expire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from discovery.errors import EtcdAuthFailed, EtcdUnavailable, LeaseLost

if TYPE_CHECKING:
    from discovery.etcd import EtcdClient

log = logging.getLogger(__name__)

RETRY_S = 0.2


class Lease:
    """Use through `EtcdClient.lease(ttl)`; `start()` grants, `put()` attaches keys, `revoke()` ends it."""

    def __init__(self, client: EtcdClient, ttl: int,
                 on_regranted: Callable[[Lease], Awaitable[None]] | None = None) -> None:
        if ttl < 1:
            raise ValueError("a lease TTL is at least 1 s")
        self._client = client
        self.ttl = ttl
        self._on_regranted = on_regranted
        self.id = 0
        self.owned: dict[str, bytes] = {}
        """Keys this lease holds and their values: what a re-granted lease puts back."""
        self.valid_until = 0.0
        """Monotonic time before which the lease is surely still alive in etcd (sent-time of the last refresh + TTL)."""
        self.regrants = 0
        self._restoring = False
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.id != 0 and time.monotonic() < self.valid_until

    async def start(self) -> Lease:
        await self._grant()
        self._task = asyncio.create_task(self._keepalive(), name=f"lease-{self.id:x}")
        return self

    async def _grant(self) -> None:
        sent = time.monotonic()
        self.id = await self._client.grant(self.ttl)
        self.valid_until = sent + self.ttl

    async def put(self, key: str, value: bytes) -> int:
        """Put `key` under this lease, and put it back if the lease is ever re-created."""
        if self.id == 0:
            raise LeaseLost("this lease was revoked (or never granted): start a new one")
        self.owned[key] = value
        return await self._client.put(key, value, lease=self.id)

    async def release(self, key: str) -> bool:
        """Delete an owned key now and stop owning it."""
        self.owned.pop(key, None)
        return await self._client.delete(key)

    async def revoke(self) -> None:
        """Stop the keepalive and revoke: every key of this lease disappears at once."""
        await self.stop()
        lease_id, self.id = self.id, 0
        self.owned.clear()
        if lease_id:
            await self._client.revoke(lease_id)

    async def stop(self) -> None:
        """Stop refreshing without revoking (the keys then expire after the TTL, as on a crash)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _keepalive(self) -> None:
        outage = False
        while True:
            await asyncio.sleep(RETRY_S if outage else self.ttl / 3)
            try:
                sent = time.monotonic()
                left = await self._client.refresh(self.id)
                if left <= 0:
                    await self._regrant()
                else:
                    self.valid_until = sent + left
                if self._restoring:
                    await self._restore()
            except (EtcdUnavailable, EtcdAuthFailed) as exc:
                # Also an auth refusal: this task is nobody's edge, so it logs and keeps trying (the
                # owner sees `alive` turn False) rather than dying unseen.
                if not outage:
                    log.warning("lease %x: keepalive failed, retrying every %.1fs: %s: %s", self.id, RETRY_S,
                                type(exc).__name__, exc)
                outage = True
                continue
            if outage:
                log.info("lease %x: etcd reachable again", self.id)
            outage = False

    async def _regrant(self) -> None:
        lost = self.id
        await self._grant()
        self.regrants += 1
        self._restoring = True
        log.warning("lease %x was lost (expired or revoked); re-created as %x with %d keys", lost, self.id,
                    len(self.owned))

    async def _restore(self) -> None:
        """Put the owned keys back under the new lease; an outage midway resumes here on the next round."""
        for key, value in list(self.owned.items()):
            await self._client.put(key, value, lease=self.id)
        if self._on_regranted is not None:
            await self._on_regranted(self)
        self._restoring = False
