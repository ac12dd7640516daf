"""Leader election and fenced placement writes, three candidates on a real etcd."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from disco_helpers import until

from allocator.model import Placement, ReplicaSet
from discovery.election import LeaderElection
from discovery.errors import FencingFailed, NotLeader
from discovery.etcd import EtcdClient
from discovery.stores import PlacementStore

MakeClient = Callable[[], Awaitable[EtcdClient]]
TTL = 2


class Candidate:
    def __init__(self, name: str, client: EtcdClient) -> None:
        self.election = LeaderElection(client, name, ttl=TTL)
        self.store = PlacementStore(client)
        self.task = asyncio.create_task(self.election.run())
        self.alive = True

    async def crash(self) -> None:
        """Stop campaigning and refreshing without resigning, as SIGKILL would."""
        self.alive = False
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        assert self.election._lease is not None
        await self.election._lease.stop()


@contextlib.asynccontextmanager
async def running(clients: MakeClient, n: int = 3) -> AsyncIterator[list[Candidate]]:
    """n candidates campaigning, with one leader already elected; all stopped (and resigned) at exit."""
    cands = [Candidate(f"r{i}", await clients()) for i in range(n)]
    try:
        await until(lambda: len(_leaders(cands)) == 1, 5, "a leader")
        yield cands
    finally:
        await _stop(cands)


def _leaders(cands: list[Candidate]) -> list[Candidate]:
    return [c for c in cands if c.alive and c.election.is_leader]


async def _stop(cands: list[Candidate]) -> None:
    for c in cands:
        c.task.cancel()
    await asyncio.gather(*(c.task for c in cands), return_exceptions=True)
    for c in cands:
        await c.election.resign()


async def test_one_leader_everyone_agrees_and_takeover_within_ttl(clients: MakeClient) -> None:
    async with running(clients) as cands:
        leader = _leaders(cands)[0]
        name = leader.election.candidate_id
        await until(lambda: all(c.election.leader_id == name for c in cands), 3, "every candidate sees it")

        await leader.crash()
        others = [c for c in cands if c is not leader]
        max_leaders = 0

        def one_leader() -> bool:
            nonlocal max_leaders
            max_leaders = max(max_leaders, len(_leaders(others)))
            return len(_leaders(others)) == 1

        await until(one_leader, TTL + 1.0, "a new leader within TTL + 1 s", interval_s=0.01)
        new = _leaders(others)[0].election.candidate_id
        assert new != name and max_leaders <= 1
        await until(lambda: all(c.election.leader_id == new for c in others), 2, "everyone follows the new leader")
        for _ in range(50):  # and it stays exactly one
            assert len(_leaders(others)) == 1
            await asyncio.sleep(0.02)


async def test_deposed_leader_placement_write_is_refused(clients: MakeClient) -> None:
    async with running(clients, 2) as cands:
        old = _leaders(cands)[0]
        first = Placement(epoch=1, replica_sets={"a": ReplicaSet(workers=("w1",), replicas=1)})
        assert await old.store.write(first, old.election) > 0
        old_fence = old.election.fence
        assert old_fence is not None

        await old.crash()  # paused: its lease lapses while it still holds the fence it saw
        new = next(c for c in cands if c is not old)
        await until(lambda: new.election.is_leader, TTL + 1.5, "the takeover")
        stale = Placement(epoch=2, replica_sets={"a": ReplicaSet(workers=("w-old",), replicas=1)})
        with pytest.raises(FencingFailed):
            await old.store.write_fenced(stale, old_fence)
        with pytest.raises(NotLeader):
            await old.store.write(stale, old.election)

        second = Placement(epoch=2, replica_sets={"a": ReplicaSet(workers=("w2",), replicas=1)})
        await new.store.write(second, new.election)
        assert await new.store.read() == second


async def test_a_write_based_on_a_stale_placement_is_refused_then_retried(clients: MakeClient) -> None:
    async with running(clients, 1) as cands:
        me = cands[0]
        await me.store.write(Placement(epoch=1), me.election)
        other_view = PlacementStore(me.store._client)
        await other_view.read()
        await me.store.write(Placement(epoch=2), me.election)  # other_view has not seen this one
        with pytest.raises(FencingFailed):
            await other_view.write(Placement(epoch=3), me.election)
        await other_view.write(Placement(epoch=3), me.election)  # refused writes re-read: next try works
        assert (await me.store.read()).epoch == 3


async def test_resign_hands_over_at_once(clients: MakeClient) -> None:
    async with running(clients, 2) as cands:
        leader = _leaders(cands)[0]
        leader.task.cancel()
        await asyncio.gather(leader.task, return_exceptions=True)
        await leader.election.resign()
        leader.alive = False
        other = next(c for c in cands if c is not leader)
        await until(lambda: other.election.is_leader, 1.0, "takeover well before the TTL")
