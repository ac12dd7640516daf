"""A fleet upgraded from the single placement document: the first router of this version reads it and
rewrites it one key per replica set (issue 18). Real etcd, a real router process, simulated workers."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import msgspec
from control_helpers import WORKER_ARGS, router_config, until

from allocator.model import Placement, ReplicaSet
from discovery.embedded import EmbeddedEtcd
from discovery.etcd import EtcdClient
from discovery.records import encode, worker_id_for
from discovery.stores import EPOCH, PLACEMENT, SETS
from router.core.records import PlacementHeader
from router.localfleet import base_url


async def test_a_router_rewrites_an_older_versions_placement_document_and_serves_from_it(
        http: aiohttp.ClientSession, etcd: EmbeddedEtcd, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    root = adapter_dirs("a1").parent
    workers = [base_url(w) for w in start_workers(1, extra_args=WORKER_ARGS)]
    client = await EtcdClient.connect([etcd.endpoint], prefix="/lora-router")
    try:
        # what this router computes too: the rewrite must happen even though nothing changed
        legacy = Placement(epoch=41, replica_sets={"a1": ReplicaSet(workers=(worker_id_for(workers[0]),),
                                                                    replicas=1)})
        await client.put(PLACEMENT, encode(legacy))
        router = start_router(router_config(root, ["a1"]), workers=workers).url

        async def rewritten() -> PlacementHeader | None:
            header = await client.get(EPOCH)
            gone = await client.get(PLACEMENT) is None
            return msgspec.json.decode(header.value, type=PlacementHeader) if header and gone else None
        header = await until(rewritten, 15, "the placement rewritten per replica set, the old document gone")
        assert header.complete and header.epoch > legacy.epoch, "epochs go on from the old document's"
        kv = await client.get(SETS + "a1")
        assert kv is not None
        assert msgspec.json.decode(kv.value, type=ReplicaSet) == legacy.replica_sets["a1"]

        async with http.post(router + "/v1/completions", json={"model": "a1", "prompt": "x", "max_tokens": 2}) as r:
            assert r.status == 200, await r.text()
    finally:
        await client.close()
