"""The placement is written when assignments change, never because demand decayed (issue 14, item 10).

Real etcd, a real router process and simulated workers: traffic gives an adapter demand, the router goes
idle while that demand fades tick after tick, and the placement header's revision in etcd must stay put;
adding an adapter must still write it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec
from control_helpers import WORKER_ARGS, get_json, router_config, until

from allocator.model import ReplicaSet
from discovery.embedded import EmbeddedEtcd
from discovery.etcd import EtcdClient, KeyValue
from discovery.stores import EPOCH, SETS
from router.localfleet import base_url

STEADY = {"defaults": {"per_replica_rps": 1000.0, "per_replica_concurrent": None}}
"""Replica counts that no test traffic changes: whatever is written while idle is written for demand alone."""


async def _placement(client: EtcdClient) -> KeyValue | None:
    return await client.get(EPOCH)


async def _ticks(http: aiohttp.ClientSession, router: str) -> int:
    return int((await get_json(http, router + "/v1/router/status"))["ticks"])


async def test_idle_router_leaves_the_placement_alone_and_a_change_still_writes_it(
        http: aiohttp.ClientSession, etcd: EmbeddedEtcd, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    root = adapter_dirs("a1").parent
    adapter_dirs("a2")
    workers = [base_url(w) for w in start_workers(2, extra_args=WORKER_ARGS)]
    router = start_router(router_config(root, ["a1"], placement=STEADY), workers=workers).url
    client = await EtcdClient.connect([etcd.endpoint], prefix="/lora-router")
    try:
        async def served() -> bool:
            body = {"model": "a1", "prompt": "x", "max_tokens": 2}
            async with http.post(router + "/v1/completions", json=body) as r:
                return r.status == 200
        for _ in range(20):
            await until(served, 15, "a completion for a1")

        async def demand_seen() -> KeyValue | None:
            kv = await _placement(client)
            view = await get_json(http, router + "/v1/loras/a1")
            return kv if kv is not None and view["demand_rps"] > 0 else None
        before = await until(demand_seen, 15, "a1 placed and its demand estimated")
        ticks = await _ticks(http, router)

        async def idle_ticks() -> bool:
            return await _ticks(http, router) >= ticks + 8
        await until(idle_ticks, 20, "eight more control ticks")
        after = await _placement(client)
        assert after is not None
        assert after.mod_revision == before.mod_revision, (
            f"idle router rewrote the placement: revision {before.mod_revision} -> {after.mod_revision}")
        assert (await get_json(http, router + "/v1/loras/a1"))["demand_rps"] > 0, "demand faded away: no test"

        async with http.post(router + "/v1/loras", json={"lora_name": "a2", "source": {"uri": str(root / "a2")},
                                                         "base_model": "sim-base"}) as r:
            assert r.status == 201, await r.text()

        async def rewritten() -> dict[str, Any] | None:
            kv = await _placement(client)
            if kv is None or kv.mod_revision == before.mod_revision:
                return None
            _, kvs = await client.range(SETS)
            replica_sets = {k: msgspec.json.decode(v.value, type=ReplicaSet) for k, v in kvs.items()}
            return replica_sets if SETS + "a2" in replica_sets else None
        replica_sets = await until(rewritten, 15, "a placement that places the new adapter")
        assert all(rs.demand_rps == 0.0 for rs in replica_sets.values()), "demand written into the placement"
    finally:
        await client.close()
