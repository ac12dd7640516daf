"""A prefix watch that survives etcd: list, watch from revision + 1, resume, re-list on compaction.

aetcd's watch ends with an error when etcd restarts and never resumes. Here
the state of the prefix is kept, every event is applied to it, and a broken
stream is re-opened at the last applied revision + 1, so a consumer sees each
change exactly once and in order. Events older than the applied revision are
dropped (no duplicates after a resume); one transaction's events share a
revision and all arrive in one response, so they are applied one by one. If etcd compacted the revisions the
watcher missed, the prefix is listed again and the new state is yielded with
`resync=True`: the consumer must treat it as a full snapshot, not a delta.
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


async def watch_prefix(client: EtcdClient, key_prefix: str,
                       resume: PrefixState | None = None) -> AsyncIterator[PrefixState]:
    state = resume
    outage = False
    while not client.closed:
        try:
            if state is None:
                revision, kvs = await client.range(key_prefix)
                state = PrefixState(key_prefix, revision, kvs, resync=True)
                yield state
            watch = await client.raw_watch(key_prefix, state.revision + 1)
            if outage:
                log.info("watch %s: resumed after revision %d", key_prefix, state.revision)
                outage = False
            async for applied in _follow(client, state, watch):
                state = applied
                yield state
        except Compacted as exc:
            log.warning("watch %s: history compacted (%s) while away: re-listing", key_prefix, exc)
            state = None
        except EtcdUnavailable as exc:
            if not outage:
                log.warning("watch %s: etcd unavailable, resuming after revision %s: %s", key_prefix,
                            state.revision if state else None, exc)
            outage = True
            await asyncio.sleep(RETRY_S)


async def _follow(client: EtcdClient, state: PrefixState,
                  watch: aetcd.rtypes.Watch) -> AsyncIterator[PrefixState]:
    """Apply events after `state.revision` until the stream breaks (raised) or the client closes (returns)."""
    kvs = dict(state.kvs)
    revision = state.revision
    try:
        async for raw in _events(watch):
            event = client.event(raw)
            if event.revision <= state.revision or event.revision < revision:
                continue  # already applied; several events may share one (transaction's) revision
            if event.kv is not None:
                kvs[event.key] = event.kv
            else:
                kvs.pop(event.key, None)
            revision = event.revision
            yield PrefixState(state.key_prefix, revision, dict(kvs), (event,))
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
