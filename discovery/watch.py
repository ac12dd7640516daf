"""A prefix watch that survives etcd: list, watch from revision + 1, resume, re-list on compaction.

aetcd's watch ends with an error when etcd restarts and never resumes. Here
the state of the prefix is kept, every event is applied to it, and a broken
stream is re-opened at the last applied revision + 1, so a consumer sees each
change exactly once and in order. Events older than the applied revision are
dropped (no duplicates after a resume); one transaction's events share a
revision and all arrive in one response, so they are applied one by one. If etcd compacted the revisions the
watcher missed, the prefix is listed again and the new state is yielded with
`resync=True`: the consumer must treat it as a full snapshot, not a delta.

Two forms: `watch_changes` yields the listing and then each event (what a consumer of a large prefix keeps
its own view with), `watch_prefix` folds them into a copy of the whole prefix after each (small prefixes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Literal

import aetcd.exceptions
import msgspec

from discovery.errors import Compacted, EtcdUnavailable

if TYPE_CHECKING:
    from discovery.etcd import EtcdClient

log = logging.getLogger(__name__)

RETRY_S = 0.2


class KeyValue(msgspec.Struct, frozen=True):
    """One key as etcd holds it; `key` is relative to the client's prefix."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int = 1
    lease: int = 0


class WatchEvent(msgspec.Struct, frozen=True):
    kind: Literal["put", "delete"]
    key: str
    revision: int
    kv: KeyValue | None = None
    """The new key-value of a put; None for a delete."""


class PrefixState(msgspec.Struct, frozen=True):
    """The whole prefix as of `revision`; `events` brought it there from the previous state."""

    key_prefix: str
    revision: int
    kvs: dict[str, KeyValue]
    events: tuple[WatchEvent, ...] = ()
    resync: bool = False
    """True for a full listing (the first state, or a re-list after compaction)."""


class PrefixChange(msgspec.Struct, frozen=True):
    """One step of a prefix: a full `listing` (the first, or a re-list after compaction), or one event.

    Why not the whole state each time: a prefix of 100,000 keys (the placement, the catalog) would be
    copied on every event; a consumer that keeps its own decoded view applies the event instead.
    """

    revision: int
    event: WatchEvent | None = None
    listing: dict[str, KeyValue] | None = None
    """Every key as of `revision`; it replaces whatever the consumer knew."""


async def watch_changes(client: EtcdClient, key_prefix: str, after: int | None = None) -> AsyncIterator[PrefixChange]:
    """A listing (unless `after` is given: events after that revision), then every event, across outages."""
    revision = after
    outage = False
    while not client.closed:
        try:
            if revision is None:
                revision, kvs = await client.range(key_prefix)
                yield PrefixChange(revision, listing=kvs)
            watch = await client.raw_watch(key_prefix, revision + 1)
            if outage:
                log.info("watch %s: resumed after revision %d", key_prefix, revision)
                outage = False
            async for event in _follow(client, revision, watch):
                revision = event.revision
                yield PrefixChange(revision, event=event)
        except Compacted as exc:
            log.warning("watch %s: history compacted (%s) while away: re-listing", key_prefix, exc)
            revision = None
        except EtcdUnavailable as exc:
            if not outage:
                log.warning("watch %s: etcd unavailable, resuming after revision %s: %s", key_prefix, revision, exc)
            outage = True
            await asyncio.sleep(RETRY_S)


async def watch_prefix(client: EtcdClient, key_prefix: str,
                       resume: PrefixState | None = None) -> AsyncIterator[PrefixState]:
    """`watch_changes` folded into whole states (a copy each): for small prefixes (workers, the leader key)."""
    kvs = dict(resume.kvs) if resume is not None else {}
    async for change in watch_changes(client, key_prefix, resume.revision if resume is not None else None):
        if change.listing is not None:
            kvs = dict(change.listing)
            yield PrefixState(key_prefix, change.revision, dict(kvs), resync=True)
            continue
        event = change.event
        assert event is not None
        if event.kv is not None:
            kvs[event.key] = event.kv
        else:
            kvs.pop(event.key, None)
        yield PrefixState(key_prefix, change.revision, dict(kvs), (event,))


async def _follow(client: EtcdClient, after: int, watch: aetcd.rtypes.Watch) -> AsyncIterator[WatchEvent]:
    """Events after revision `after` until the stream breaks (raised) or the client closes (returns)."""
    revision = after
    try:
        async for raw in _events(watch):
            event = client.event(raw)
            if event.revision <= after or event.revision < revision:
                continue  # already applied; several events may share one (transaction's) revision
            revision = event.revision
            yield event
    finally:
        if not client.closed:
            await asyncio.shield(_cancel(watch))


async def _events(watch: aetcd.rtypes.Watch) -> AsyncIterator[aetcd.rtypes.Event]:
    try:
        async for raw in watch:
            yield raw
    except aetcd.exceptions.RevisionCompactedError as exc:
        raise Compacted(exc.compacted_revision) from None
    except (aetcd.exceptions.ClientError, aetcd.rpc.AioRpcError) as exc:
        raise EtcdUnavailable(f"watch stream broken: {type(exc).__name__}: {exc}") from None


async def _cancel(watch: aetcd.rtypes.Watch) -> None:
    """Best-effort cancel of a stream that may already be gone (etcd down, or its client closed by a
    fail-over, where aetcd's watcher is already torn down and the cancel has nothing left to do)."""
    with contextlib.suppress(aetcd.exceptions.ClientError, aetcd.rpc.AioRpcError, AttributeError):
        await watch.cancel()
