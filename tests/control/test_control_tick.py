"""The control tick in-process against a real etcd: two routers, one leader, demand summed over both,
replicas following it up and down, a leader's death, and a config reload taking effect at the next tick."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from control_helpers import BASE, until

from allocator.config import ConfigError
from allocator.model import Placement
from discovery.election import LeaderElection
from discovery.embedded import EmbeddedEtcd
from discovery.etcd import EtcdClient
from discovery.stores import CatalogStore, DemandStore, PlacementStore
from router.config import LoadedConfig, load_config
from router.control import ControlLoop
from router.core.events import CatalogChanged, MembershipChanged, PlacementChanged
from router.core.fleetstate import FleetState
from router.core.records import AdapterRecord, WorkerRecord
from router.demand import DemandCounter
from router.live import LiveConfig
from router.metrics import RouterMetrics

TTL = 2
WORKERS = {f"w{i}": WorkerRecord(id=f"w{i}", url=f"http://127.0.0.1:{9 + i}", base_models=(BASE,), instance="i")
           for i in range(3)}


class Router:
    """One router's control plane: its state, stores, election and control loop, with the watchers it needs."""

    def __init__(self, name: str, config: LoadedConfig, catalog: dict[str, AdapterRecord] | None,
                 client: EtcdClient) -> None:
        self.name = name
        self.live = LiveConfig(config)
        self.state = FleetState()
        if catalog is not None:
            self.state.apply(CatalogChanged(catalog))
        self.demand = DemandCounter()
        self.client = client
        self.placements = PlacementStore(client)
        self.demand_store = DemandStore(client, ttl=TTL)
        self.election = LeaderElection(client, name, ttl=TTL)
        self.catalog = CatalogStore(client)
        self.control = ControlLoop(name, self.live, self.state, self.demand, RouterMetrics(10), self.demand_store,
                                   self.placements, self.election, catalog=self.catalog)
        self.tasks: list[asyncio.Task[None]] = []

    async def follow_placement(self) -> None:
        async for placement in self.placements.watch():
            self.state.apply(PlacementChanged(placement))

    def start(self) -> Router:
        self.state.apply(MembershipChanged(WORKERS))
        self.tasks = [asyncio.create_task(c()) for c in (self.election.run, self.control.run,
                                                          self.follow_placement)]
        return self

    async def crash(self) -> None:
        """Stop everything without resigning: the others find out when the lease expires."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.close()


def _write_config(path: Path, catalog: list[dict[str, str]] = (), **placement: Any) -> Path:
    config = {"control": {"tick_s": 0.2, "lease_ttl_s": TTL}, "adapters": list(catalog),
              "security": {"allowed_path_prefixes": ["/adapters"]},
              "placement": {"defaults": {"per_replica_rps": 4.0, "per_replica_concurrent": None,
                                         "scale_down_cooldown_s": 1.0}, "fall_tau_s": 0.3, **placement}}
    path.write_bytes(msgspec.json.encode(config))
    return path


@pytest.fixture
async def routers(etcd: EmbeddedEtcd, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[Router] = []

    async def make(n: int) -> list[Router]:
        config = load_config(_write_config(tmp_path / "router.yaml"))
        seed_client = await EtcdClient.connect([etcd.endpoint])
        seed = CatalogStore(seed_client)
        await seed.put(AdapterRecord(name="hot", source="/adapters/hot", base_model=BASE))
        await seed.put(AdapterRecord(name="cold", source="/adapters/cold", base_model=BASE))
        catalog = await seed.list()
        await seed_client.close()
        out = []
        for i in range(n):
            router = Router(f"r{i}", config, catalog, await EtcdClient.connect([etcd.endpoint]))
            made.append(router.start())
            out.append(router)
        return out

    yield make
    for router in made:
        await router.crash()


async def _stored(router: Router) -> Placement | None:
    return await PlacementStore(router.client).read()


async def _replicas(router: Router, name: str) -> int | None:
    placement = await _stored(router)
    if placement is None or name not in placement.replica_sets:
        return None
    return len(placement.replica_sets[name].workers)


class Arrivals:
    """Requests for one adapter arriving at one router at a steady rate (counted as the proxy counts them)."""

    def __init__(self, router: Router, adapter: str, rps: float) -> None:
        self.router = router
        self.adapter = adapter
        self.rps = rps
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.router.demand.started(self.adapter)
            self.router.demand.finished(self.adapter)
            await asyncio.sleep(1.0 / self.rps)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def _one_leader(routers: list[Router]) -> Router | None:
    leaders = [r for r in routers if r.election.is_leader]
    return leaders[0] if len(leaders) == 1 else None


async def test_one_leader_places_with_demand_summed_over_routers(routers: Callable) -> None:
    first, second = await routers(2)
    leader = await until(lambda: _one_leader([first, second]), 10, "exactly one leader")
    follower = second if leader is first else first
    await until(lambda: _replicas(first, "hot"), 10, "a first placement in etcd")
    assert await _replicas(first, "hot") == 1 and await _replicas(first, "cold") == 1

    arrivals = [Arrivals(follower, "hot", 5.0), Arrivals(leader, "hot", 5.0)]
    try:
        await until(lambda: _at(first, "hot", 3), 10, "three replicas: 10 rps over two routers at 4 rps each")
        reports = await DemandStore(first.client).read_all()
        assert set(reports) == {"r0", "r1"}
        assert all(r.adapters["hot"].rps > 2.0 for r in reports.values())
        placement = await _stored(first)
        assert placement is not None and placement.replica_sets["cold"].replicas == 1
    finally:
        for a in arrivals:
            await a.stop()
    await until(lambda: _at(first, "hot", 1), 15, "back to one replica after the cooldown")
    assert follower.control.placements_written == 0, "only the leader writes the placement"


async def test_a_leader_places_nothing_before_its_catalog_has_been_listed(etcd: EmbeddedEtcd, tmp_path: Path) -> None:
    """At 100,000 adapters the catalog's first listing takes seconds; a leader that placed meanwhile wrote
    an empty placement, and every router began unloading every adapter."""
    config = load_config(_write_config(tmp_path / "router.yaml"))
    router = Router("r0", config, None, await EtcdClient.connect([etcd.endpoint])).start()
    try:
        await until(lambda: _leads(router), 10, "leadership")
        ticks = router.control.ticks
        await until(lambda: _ticked(router, ticks + 3), 10, "three control ticks as leader")
        assert await _stored(router) is None, "a placement computed from a catalog not listed yet"
        router.state.apply(CatalogChanged({"hot": AdapterRecord(name="hot", source="/adapters/hot", base_model=BASE)}))
        await until(lambda: _replicas(router, "hot"), 10, "a placement once the catalog is known")
    finally:
        await router.crash()


async def _ticked(router: Router, n: int) -> bool:
    return router.control.ticks >= n


async def _at(router: Router, name: str, n: int) -> bool:
    return await _replicas(router, name) == n


async def test_the_other_router_takes_over_and_keeps_following_demand(routers: Callable) -> None:
    first, second = await routers(2)
    leader = await until(lambda: _one_leader([first, second]), 10, "exactly one leader")
    survivor = second if leader is first else first
    await until(lambda: _replicas(survivor, "hot"), 10, "a first placement")
    epoch = (await _stored(survivor)).epoch  # type: ignore[union-attr]
    await leader.crash()
    await until(lambda: _leads(survivor), TTL + 2, "the survivor to lead")
    arrivals = Arrivals(survivor, "hot", 12.0)
    try:
        await until(lambda: _at(survivor, "hot", 3), 10, "the new leader to scale 'hot' up")
    finally:
        await arrivals.stop()
    placement = await _stored(survivor)
    assert placement is not None and placement.epoch > epoch
    assert survivor.election.is_leader and survivor.election.leader_id == survivor.name


async def _leads(router: Router) -> bool:
    return router.election.is_leader


async def test_a_config_reload_applies_at_the_next_tick(routers: Callable, tmp_path: Path) -> None:
    (only,) = await routers(1)
    await until(lambda: _at(only, "cold", 1), 10, "one replica of 'cold'")
    fresh = {"name": "fresh", "source": "/adapters/fresh", "base_model": BASE}
    bad = {"name": "bad", "source": "/etc/passwd", "base_model": BASE}
    with pytest.raises(ConfigError, match="adapters\\[1\\] \\('bad'\\)"):  # refused whole, never half-applied
        load_config(_write_config(tmp_path / "bad.yaml", [fresh, bad]))
    reloaded = load_config(_write_config(tmp_path / "new.yaml", [fresh], adapters={"cold": {"min_replicas": 3}}))
    only.live.swap(reloaded)
    ticks = only.control.ticks
    await until(lambda: _at(only, "cold", 3), 10, "three replicas after the reload")
    assert only.control.ticks - ticks <= 3, "applied within a tick or two, not after a restart"
    assert await _replicas(only, "hot") == 1
    catalog = await only.catalog.list()
    assert "fresh" in catalog, "new config adapters declared"
