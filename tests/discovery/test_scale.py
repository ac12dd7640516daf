"""Three routers and fifty registrars on one etcd converge to one membership and one leader."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiohttp
from disco_helpers import FakeFleet, until

from discovery.election import LeaderElection
from discovery.etcd import EtcdClient
from discovery.probe import WorkerProbe
from discovery.registrar import Registrar, RegistrarConfig
from discovery.registry import WorkerRegistry
from discovery.stores import DemandStore

MakeClient = Callable[[], Awaitable[EtcdClient]]
WORKERS = 50
ROUTERS = 3
TTL = 2


async def test_three_routers_fifty_registrars_converge(clients: MakeClient, fleet: FakeFleet) -> None:
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    views: list[dict[str, object]] = [{} for _ in range(ROUTERS)]
    elections: list[LeaderElection] = []

    async def follow(client: EtcdClient, i: int) -> None:
        async for m in WorkerRegistry(client).watch():
            views[i] = dict(m.workers)

    async with aiohttp.ClientSession() as session:
        for i in range(WORKERS):
            url = fleet.add(f"s{i}")
            config = RegistrarConfig(worker_url=url, ttl=TTL, health_interval_s=0.5)
            registrar = Registrar(WorkerRegistry(await clients()), WorkerProbe(session, url), config)
            tasks.append(asyncio.create_task(registrar.run(stop)))
        for i in range(ROUTERS):
            client = await clients()
            elections.append(LeaderElection(client, f"router-{i}", ttl=TTL))
            tasks.append(asyncio.create_task(elections[-1].run()))
            tasks.append(asyncio.create_task(follow(client, i)))
        try:
            await until(lambda: all(len(v) == WORKERS for v in views), 30, "every router sees all 50 workers")
            assert views[0] == views[1] == views[2]
            assert len({r.id for r in views[0].values()}) == WORKERS  # type: ignore[attr-defined]
            await until(lambda: sum(e.is_leader for e in elections) == 1, 5, "exactly one leader")
            leader = next(e.candidate_id for e in elections if e.is_leader)
            await until(lambda: all(e.leader_id == leader for e in elections), 3, "every router agrees")
            for i in range(ROUTERS):  # routers also publish demand: still one consistent picture
                await DemandStore(await clients(), ttl=TTL).publish(f"router-{i}", {})

            for i in range(0, WORKERS, 10):
                fleet.workers[f"s{i}"].healthy = False
            await until(lambda: all(len(v) == WORKERS - 5 for v in views), 10, "five failed workers withdrawn")
            assert views[0] == views[1] == views[2]
        finally:
            stop.set()
            for task in tasks[WORKERS:]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
