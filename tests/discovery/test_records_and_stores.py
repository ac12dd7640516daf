"""Registry snapshots, stores and malformed values, against a real etcd."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest
from disco_helpers import until

from allocator.model import Demand, Placement, ReplicaSet
from discovery.etcd import EtcdClient
from discovery.records import encode, normalise_url, worker_id_for
from discovery.registry import Membership, WorkerRegistry
from discovery.stores import CatalogStore, DemandStore, PlacementStore, sum_demand
from router.core.records import AdapterRecord, DemandReport, WorkerRecord

MakeClient = Callable[[], Awaitable[EtcdClient]]


def _record(wid: str, instance: str = "i1") -> WorkerRecord:
    return WorkerRecord(id=wid, url=f"http://10.0.0.1:8000/{wid}", base_models=("base",), instance=instance)


def test_stable_worker_id_ignores_spelling_but_not_identity() -> None:
    assert worker_id_for("http://Host:80/") == worker_id_for("http://host") == worker_id_for(" http://host:80 ")
    assert worker_id_for("http://host:8001") != worker_id_for("http://host:8002")
    assert normalise_url("https://h/") == "https://h:443"
    with pytest.raises(ValueError):
        worker_id_for("host:8000")


def test_worker_record_to_allocator_worker() -> None:
    record = WorkerRecord(id="w1", url="http://h:1", base_models=("b",), slots=5, weight=2.0, max_lora_rank=64)
    worker = record.to_worker()
    assert (worker.id, worker.base_model, worker.slots, worker.weight, worker.max_lora_rank) == ("w1", "b", 5, 2.0, 64)


async def test_malformed_records_are_skipped_with_one_warning(clients: MakeClient,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    writer, watcher = await clients(), await clients()
    registry = WorkerRegistry(writer)
    good = await registry.register(_record("w1"), ttl=5)
    await writer.put("workers/junk", b"{not json")
    await writer.put("workers/old", b'{"id": "old", "url": 5}')
    await writer.put("workers/liar", encode(_record("someone-else")))  # valid, but not its key
    seen: list[Membership] = []

    async def follow() -> None:
        async for m in WorkerRegistry(watcher).watch():
            seen.append(m)

    caplog.set_level(logging.WARNING, logger="discovery.registry")
    task = asyncio.create_task(follow())
    try:
        await until(lambda: seen and list(seen[-1].workers) == ["w1"], 5, "only the good record")
        second = await registry.register(_record("w2"), ttl=5)
        await until(lambda: list(seen[-1].workers) == ["w1", "w2"], 5, "a later good record still arrives")
        await second.withdraw()
        await until(lambda: list(seen[-1].workers) == ["w1"], 5, "withdrawn at once")
        assert not task.done(), "the watcher must survive bad values"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await good.withdraw()
    warnings = [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 3, warnings
    assert all(any(k in w for w in warnings) for k in ("workers/junk", "workers/old", "workers/liar"))
    assert [m.revision for m in seen] == sorted({m.revision for m in seen})


async def test_membership_snapshot_is_ordered_and_only_sent_on_change(clients: MakeClient) -> None:
    client = await clients()
    registry = WorkerRegistry(client)
    regs = [await registry.register(_record(w), ttl=5) for w in ("w3", "w1", "w2")]
    stream = registry.watch()
    try:
        first = await anext(stream)
        assert list(first.workers) == ["w1", "w2", "w3"]
        await client.put("workers/garbage", b"[]")  # changes etcd, not the membership: no snapshot
        await regs[0].update(_record("w3", instance="i2"))
        nxt = await asyncio.wait_for(anext(stream), 5)
        assert nxt.workers["w3"].instance == "i2" and nxt.revision > first.revision + 1
    finally:
        await stream.aclose()
        for r in regs:
            await r.withdraw()


async def test_catalog_is_durable_and_watched(clients: MakeClient, caplog: pytest.LogCaptureFixture) -> None:
    client = await clients()
    catalog = CatalogStore(client)
    await catalog.put(AdapterRecord(name="a", source="/adapters/a", base_model="base", rank=16, tenant="t1"))
    await client.put("adapters/broken", b"{}")
    got = await catalog.get("a")
    assert got is not None and got.rank == 16 and got.tenant == "t1" and got.created_at > 0
    stream = catalog.watch()
    try:
        assert list(await anext(stream)) == ["a"]
        await catalog.put(AdapterRecord(name="b", source="s3://bucket/b", base_model="base"))
        assert list(await asyncio.wait_for(anext(stream), 5)) == ["a", "b"]
        assert await catalog.delete("a") and not await catalog.delete("a")
        assert list(await asyncio.wait_for(anext(stream), 5)) == ["b"]
    finally:
        await stream.aclose()
    assert list(await catalog.list()) == ["b"]
    assert sum("adapters/broken" in r.getMessage() for r in caplog.records) == 1


async def test_demand_reports_are_leased_per_router_and_summed(clients: MakeClient) -> None:
    r1, r2, reader = await clients(), await clients(), await clients()
    s1, s2 = DemandStore(r1, ttl=2), DemandStore(r2, ttl=2)
    await s1.publish("r1", {"a": Demand(rps=1.0, inflight=2.0)}, at=10.0)
    await s2.publish("r2", {"a": Demand(rps=3.0), "b": Demand(rps=0.5)}, at=10.0)
    reports = await DemandStore(reader).read_all()
    assert sorted(reports) == ["r1", "r2"] and reports["r1"] == DemandReport(
        router_id="r1", at=10.0, adapters={"a": Demand(rps=1.0, inflight=2.0)})
    assert sum_demand(reports) == {"a": Demand(rps=4.0, inflight=2.0), "b": Demand(rps=0.5)}
    await s1.close()  # a clean stop withdraws at once
    assert sorted(await DemandStore(reader).read_all()) == ["r2"]
    assert s2._lease is not None
    await s2._lease.stop()  # a crash: the report expires with the lease
    await until(lambda: _no_reports(reader), 4, "a dead router's demand disappears after its TTL")


async def _no_reports(client: EtcdClient) -> bool:
    return not await DemandStore(client).read_all()


async def test_placement_watch_skips_malformed_documents(clients: MakeClient) -> None:
    client = await clients()
    store = PlacementStore(client)
    stream = store.watch()
    placement = Placement(epoch=3, replica_sets={"a": ReplicaSet(workers=("w1",), replicas=1)})
    try:
        waiting = asyncio.create_task(anext(stream))
        await client.put("placement", b"garbage")
        await client.put("placement", b'{"epoch": "three"}')
        await client.put("placement", encode(placement))
        assert await asyncio.wait_for(waiting, 5) == placement
    finally:
        await stream.aclose()


async def test_a_report_of_50000_adapters_is_published_in_chunks_and_read_back_whole(clients: MakeClient) -> None:
    """One router's demand for 100,000 adapters was one value of ~4 MB, past etcd's 1.5 MiB request limit:
    every publish failed and the leader placed without that router's demand."""
    client = await clients()
    store = DemandStore(client)
    adapters = {f"adapter-{i:06d}": Demand(rps=1.0 / (i + 1), inflight=float(i % 3)) for i in range(50000)}
    await store.publish("r1", adapters, at=1.0)
    report = (await DemandStore(client).read_all())["r1"]
    assert len(report.adapters) == 50000
    assert report.adapters["adapter-000002"] == Demand(rps=0.333, inflight=2.0), "three significant digits"
    _, kvs = await client.range("load/")
    assert len(kvs) > 1 and max(len(kv.value) for kv in kvs.values()) < 512 * 1024
    revisions = {k: kv.mod_revision for k, kv in kvs.items()}

    await store.publish("r1", {**adapters, "adapter-000000": Demand(rps=2.0)}, at=2.0)
    _, kvs = await client.range("load/")
    assert sum(kv.mod_revision != revisions[k] for k, kv in kvs.items()) == 1, "only the chunk that changed"

    await store.publish("r1", {"only": Demand(rps=1.0)}, at=3.0)
    _, kvs = await client.range("load/")
    assert list(kvs) == ["load/r1"], "chunks no longer needed are deleted"
    assert (await DemandStore(client).read_all())["r1"].adapters == {"only": Demand(rps=1.0)}
    await store.close()
