"""The placement in etcd, one key per replica set: written per change, read incrementally, never half an epoch.

A real etcd; the writer is an elected leader, as in a router.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from disco_helpers import until

from allocator.model import Placement, ReplicaSet
from discovery.election import LeaderElection
from discovery.etcd import Compare, EtcdClient, Put
from discovery.records import encode
from discovery.stores import EPOCH, PLACEMENT, SETS, PlacementStore

MakeClient = Callable[[], Awaitable[EtcdClient]]


@contextlib.asynccontextmanager
async def leading(client: EtcdClient) -> AsyncIterator[LeaderElection]:
    election = LeaderElection(client, "leader", ttl=5)
    task = asyncio.create_task(election.run())
    try:
        await until(lambda: election.is_leader, 5, "leadership")
        yield election
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await election.resign()


def _placement(epoch: int, n: int, moved: frozenset[int] = frozenset(), short: frozenset[int] = frozenset()
               ) -> Placement:
    sets = {f"a{i:04d}": ReplicaSet(workers=(f"w{(i + epoch * (i in moved)) % 7}",), replicas=2 if i in short else 1)
            for i in range(n)}
    return Placement(epoch=epoch, computed_at=float(epoch), replica_sets=sets,
                     unplaced=tuple(sorted(f"a{i:04d}" for i in short)))


async def _mod_revisions(client: EtcdClient) -> dict[str, int]:
    _, kvs = await client.range(SETS)
    return {k: kv.mod_revision for k, kv in kvs.items()}


async def test_only_the_sets_that_changed_are_written_in_transactions_under_etcds_limits(
        clients: MakeClient) -> None:
    client = await clients()
    store = PlacementStore(client)
    async with leading(client) as election:
        first = _placement(1, 250, short=frozenset({3}))
        await store.write(first, election)  # 250 puts: 3 transactions of at most 100 (etcd allows 128)
        assert await PlacementStore(client).read() == first
        before = await _mod_revisions(client)
        assert len(before) == 250 and len(set(before.values())) == 3

        second = _placement(2, 249, moved=frozenset({5, 17, 99}))  # 3 moved, a0249 gone, a0003 placed
        revision = await store.write(second, election)
        after = await _mod_revisions(client)
        changed = {k for k in after if after[k] != before[k]}
        assert changed == {SETS + n for n in ("a0003", "a0005", "a0017", "a0099")}
        assert set(after.values()) - set(before.values()) == {revision}, "one transaction for a small change"
        assert SETS + "a0249" not in after
        assert await PlacementStore(client).read() == second


async def test_a_reader_sees_whole_epochs_only_while_the_leader_writes_many_transactions(
        clients: MakeClient) -> None:
    """Each epoch is written 3 sets per transaction; the reader's every placement is one the leader wrote."""
    writer, reader = await clients(), await clients()
    store = PlacementStore(writer, ops_per_txn=3)
    written = [_placement(e, 40, moved=frozenset(range(0, 40, e))) for e in range(1, 8)]
    seen: list[Placement] = []

    async def follow() -> None:
        async for placement in PlacementStore(reader).watch():
            seen.append(placement)
            if placement == written[-1]:
                return
    following = asyncio.create_task(follow())
    async with leading(writer) as election:
        for placement in written:
            await store.write(placement, election)
        await asyncio.wait_for(following, 10)
    assert seen and all(p in written for p in seen), "a reader saw a placement nobody wrote: half an epoch"
    assert seen[-1] == written[-1]


async def test_an_epoch_a_dead_leader_left_half_written_is_not_taken_until_the_next_leader_completes_one(
        clients: MakeClient) -> None:
    client, reader = await clients(), await clients()
    async with leading(client) as election:
        await PlacementStore(client).write(_placement(1, 10), election)
        fence = election.fence
        assert fence is not None
        stream = PlacementStore(reader).watch()
        assert (await anext(stream)).epoch == 1
        half = PlacementStore(client)
        await half.read()
        # the first transaction of epoch 2 lands, the leader dies before the rest
        moved = list(_placement(2, 10, moved=frozenset(range(10))).replica_sets.items())[:4]
        header = b'{"epoch":2,"computed_at":2.0,"complete":false}'
        result = await client.txn([*fence.compares(), Compare(EPOCH, "mod", half.seen_revision or 0)],
                                  [*(Put(SETS + name, encode(rs)) for name, rs in moved), Put(EPOCH, header)])
        assert result.succeeded
        assert (await PlacementStore(client).read()).epoch == 2  # what a new leader reads: the mix
        nothing = asyncio.create_task(anext(stream))
        done, _ = await asyncio.wait([nothing], timeout=0.5)
        assert not done, "a reader took an incomplete epoch"
        third = _placement(3, 10, moved=frozenset({1}))
        await PlacementStore(client).write(third, election)
        assert await asyncio.wait_for(nothing, 5) == third
        await stream.aclose()


async def test_an_older_versions_single_document_is_read_then_rewritten_per_set(clients: MakeClient) -> None:
    client, reader = await clients(), await clients()
    legacy = _placement(7, 30, short=frozenset({2}))
    await client.put(PLACEMENT, encode(legacy))
    stream = PlacementStore(reader).watch()
    assert await asyncio.wait_for(anext(stream), 5) == legacy, "a router of this version reads the old layout"
    store = PlacementStore(client)
    assert await store.read() == legacy and store.legacy
    async with leading(client) as election:
        same = Placement(epoch=8, computed_at=8.0, replica_sets=legacy.replica_sets, unplaced=legacy.unplaced)
        await store.write(same, election)
    assert await client.get(PLACEMENT) is None, "the old document is deleted with the epoch that replaces it"
    assert len(await _mod_revisions(client)) == 30
    assert await asyncio.wait_for(anext(stream), 5) == same
    assert await PlacementStore(client).read() == same and not store.legacy
    await stream.aclose()
