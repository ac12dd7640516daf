"""The etcd layer against a real etcd: prefixes, typed errors, lease loss, watches across restart and compaction."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from disco_helpers import until

from discovery.embedded import EmbeddedEtcd
from discovery.errors import EtcdUnavailable, LeaseLost
from discovery.etcd import Compare, EtcdClient, PrefixState, Put

MakeClient = Callable[[], Awaitable[EtcdClient]]


async def test_keys_live_under_the_prefix_and_txn_compares(etcd: EmbeddedEtcd, clients: MakeClient) -> None:
    mine = await clients()
    other = await EtcdClient.connect([etcd.endpoint], prefix="/other-fleet")
    try:
        await mine.put("adapters/a", b"1")
        assert await other.get("adapters/a") is None
        _, listed = await mine.range("adapters/")
        assert list(listed) == ["adapters/a"]
        kv = listed["adapters/a"]
        stale = await mine.txn([Compare("adapters/a", "mod", kv.mod_revision - 1)], [Put("adapters/a", b"2")])
        assert not stale.succeeded and (await mine.get("adapters/a")).value == b"1"
        fresh = await mine.txn([Compare("adapters/a", "mod", kv.mod_revision)], [Put("adapters/a", b"2")])
        assert fresh.succeeded and (await mine.get("adapters/a")).value == b"2"
    finally:
        await other.close()


async def test_a_listing_larger_than_a_grpc_message_is_read_whole_at_one_revision(clients: MakeClient) -> None:
    """100,000 catalog entries are ~19 MB; one reply of that size was refused by gRPC (4 MiB) and a router
    never finished starting. 2,500 keys of 2 KB (5 MB) here."""
    client, writer = await clients(), await clients()
    value = b"x" * 2000
    for start in range(0, 2500, 100):
        await client.txn([], [Put(f"big/{i:05d}", value) for i in range(start, start + 100)])
    await client.put("big-sibling", b"not under big/")
    revision, listed = await client.range("big/")
    assert len(listed) == 2500 and sorted(listed) == [f"big/{i:05d}" for i in range(2500)]
    assert all(kv.value == value for kv in listed.values())
    await writer.put("big/00000", b"changed")
    await writer.put("big/99999", b"new")
    later, relisted = await client.range("big/")
    assert later > revision and relisted["big/00000"].value == b"changed" and len(relisted) == 2501


async def test_unreachable_etcd_is_etcd_unavailable(etcd: EmbeddedEtcd, clients: MakeClient) -> None:
    client = await clients()
    etcd.kill()
    with pytest.raises(EtcdUnavailable):
        await client.put("k", b"v")
    with pytest.raises(EtcdUnavailable):
        await EtcdClient.connect([etcd.endpoint], timeout_s=1.0)


async def test_second_endpoint_takes_over_when_the_first_is_dead(etcd: EmbeddedEtcd) -> None:
    from discovery.ports import free_port

    client = EtcdClient([f"http://127.0.0.1:{free_port()}", etcd.endpoint], prefix="/t", timeout_s=1.0)
    try:
        with pytest.raises(EtcdUnavailable):
            await client.put("k", b"v")
        await client.put("k", b"v")
        assert client.endpoint == f"127.0.0.1:{etcd.client_port}"
    finally:
        await client.close()


async def test_lost_lease_is_recreated_and_its_keys_put_back(clients: MakeClient) -> None:
    owner, operator = await clients(), await clients()
    regranted: list[int] = []

    async def on_regranted(lease: object) -> None:
        regranted.append(lease.id)  # type: ignore[attr-defined]

    lease = await owner.lease(3, on_regranted).start()
    try:
        await lease.put("workers/x", b"record")
        first = lease.id
        await operator.revoke(first)  # as if it expired during an outage
        assert await operator.get("workers/x") is None
        kv = await until(lambda: operator.get("workers/x"), 3.0, "the key put back under a new lease")
        assert kv.value == b"record" and kv.lease == lease.id != first
        assert regranted == [lease.id] and lease.regrants == 1
    finally:
        await lease.revoke()
    assert await operator.get("workers/x") is None
    with pytest.raises(LeaseLost):
        await lease.put("workers/x", b"again")


async def _collect(client: EtcdClient, key_prefix: str, into: list[PrefixState],
                   resume: PrefixState | None = None) -> None:
    async for state in client.watch_prefix(key_prefix, resume):
        into.append(state)


def _folded(states: list[PrefixState]) -> list[tuple[int, dict[str, bytes]]]:
    return [(s.revision, {k: kv.value for k, kv in s.kvs.items()}) for s in states]


async def test_watch_resumes_across_etcd_kill_without_missing_or_repeating(
        etcd: EmbeddedEtcd, clients: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    writer, watcher = await clients(), await clients()
    await writer.put("w/seed", b"0")
    seen: list[PrefixState] = []
    task = asyncio.create_task(_collect(watcher, "w/", seen))
    try:
        await until(lambda: seen, 5, "the first listing")
        for i in range(20):  # a burst, then etcd dies before the watcher can have seen all of it
            await writer.put(f"w/{i % 7}", str(i).encode())
        await writer.delete("w/seed")
        etcd.kill()
        etcd.start()
        for i in range(20, 30):
            key, value = f"w/{i % 5}", str(i).encode()
            await until(lambda: _try_put(writer, key, value), 10, "etcd back for writes")  # noqa: B023
        last = await writer.revision()
        await until(lambda: seen[-1].revision == last, 10, "the watcher caught up after the restart")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    history: list[PrefixState] = []
    replay = asyncio.create_task(_collect(watcher, "w/", history, PrefixState("w/", seen[0].revision, seen[0].kvs)))
    try:
        await until(lambda: history and history[-1].revision == last, 10, "the uninterrupted replay")
    finally:
        replay.cancel()
        await asyncio.gather(replay, return_exceptions=True)
    revisions = [s.revision for s in seen]
    assert revisions == sorted(set(revisions)), "a change was delivered twice or out of order"
    assert _folded(seen[1:]) == _folded(history), "the resumed watch differs from etcd's own history"
    assert len(history) == 31 and not any(s.resync for s in seen[1:])
    assert any("resuming after revision" in r.getMessage() for r in caplog.records), "the stream never broke"


async def _try_put(client: EtcdClient, key: str, value: bytes) -> bool:
    try:
        await client.put(key, value)
    except EtcdUnavailable:
        return False
    return True


async def test_compaction_while_away_gives_a_full_consistent_relist(clients: MakeClient) -> None:
    writer, watcher = await clients(), await clients()
    for i in range(5):
        await writer.put(f"w/{i}", b"old")
    stream = watcher.watch_prefix("w/")
    first = await anext(stream)
    await stream.aclose()  # the watcher goes away ...
    await writer.delete("w/0")
    await writer.put("w/1", b"new")
    await writer.put("w/9", b"new")
    await writer.compact(await writer.revision())  # ... and the history it missed is compacted
    resumed = watcher.watch_prefix("w/", resume=first)
    try:
        state = await asyncio.wait_for(anext(resumed), 10)
    finally:
        await resumed.aclose()
    _, actual = await writer.range("w/")
    assert state.resync
    assert {k: kv.value for k, kv in state.kvs.items()} == {k: kv.value for k, kv in actual.items()}
    assert set(state.kvs) == {"w/1", "w/2", "w/3", "w/4", "w/9"}


async def test_resume_without_compaction_replays_the_missed_events(clients: MakeClient) -> None:
    writer, watcher = await clients(), await clients()
    await writer.put("w/a", b"1")
    stream = watcher.watch_prefix("w/")
    first = await anext(stream)
    await stream.aclose()
    await writer.put("w/b", b"2")
    await writer.delete("w/a")
    resumed = watcher.watch_prefix("w/", resume=first)
    try:
        got = [await asyncio.wait_for(anext(resumed), 5) for _ in range(2)]
    finally:
        await resumed.aclose()
    assert [(e.kind, e.key) for s in got for e in s.events] == [("put", "w/b"), ("delete", "w/a")]
    assert not any(s.resync for s in got) and set(got[-1].kvs) == {"w/b"}


async def test_every_event_of_a_multi_key_transaction_arrives(clients: MakeClient) -> None:
    writer, watcher = await clients(), await clients()
    stream = watcher.watch_prefix("w/")
    try:
        await anext(stream)
        await writer.txn([], [Put("w/x", b"1"), Put("w/y", b"2")])
        got = [await asyncio.wait_for(anext(stream), 5) for _ in range(2)]
    finally:
        await stream.aclose()
    assert got[0].revision == got[1].revision and set(got[-1].kvs) == {"w/x", "w/y"}


async def test_watch_follows_a_fail_over_to_the_next_endpoint(etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    """Two independent etcds stand in for two members of one cluster: the watch moves on to the second."""
    second = EmbeddedEtcd(tmp_path / "second", name="second")
    second.start()
    client = EtcdClient([etcd.endpoint, second.endpoint], prefix="/t", timeout_s=1.0)
    writer = await EtcdClient.connect([second.endpoint], prefix="/t")
    try:
        await writer.put("w/only-on-second", b"1")
        stream = client.watch_prefix("w/")
        first = await anext(stream)
        assert first.kvs == {}
        etcd.kill()
        state = await asyncio.wait_for(anext(stream), 10)
        assert set(state.kvs) == {"w/only-on-second"}
        await stream.aclose()
    finally:
        await writer.close()
        await client.close()
        second.kill()
