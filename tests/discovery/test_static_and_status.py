"""Static discovery over real HTTP, the probe's parsing, and `lora-router status` as a real process."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from disco_helpers import until

from allocator.model import Placement, ReplicaSet
from discovery.election import LeaderElection
from discovery.embedded import EmbeddedEtcd
from discovery.etcd import EtcdClient
from discovery.ports import free_port
from discovery.probe import parse_metrics
from discovery.records import encode
from discovery.registry import Membership, WorkerRegistry
from discovery.static import StaticDiscovery
from discovery.stores import CatalogStore
from router.core.records import AdapterRecord, WorkerRecord
from router.localfleet import base_url, sim_worker
from router.procs import ManagedProcess

MakeClient = Callable[[], Awaitable[EtcdClient]]


def test_metrics_parsing_reads_max_lora_and_start_time_or_none() -> None:
    page = ('# HELP x\nvllm:lora_requests_info{max_lora="16",running_lora_adapters="a",waiting_lora_adapters=""} '
            '1.7e9\nprocess_start_time_seconds 1.7000001e+09\n')
    assert parse_metrics(page) == (16, 1.7000001e9)
    assert parse_metrics("vllm:num_requests_running 0\n") == (None, None)


async def test_static_discovery_probes_workers_and_tracks_restarts(
        start_workers: Callable[..., list[ManagedProcess]], tmp_path: Path) -> None:
    procs = start_workers(2, extra_args=("--max-loras", "3", "--api-key", "k"))
    a, b = (base_url(w) for w in procs)
    late = f"http://127.0.0.1:{free_port()}"
    discovery = StaticDiscovery([a, b, late], api_key="k", interval_s=0.05)
    seen: list[Membership] = []

    def instances() -> dict[str, str]:
        return {r.url: r.instance for r in seen[-1].workers.values()} if seen else {}

    async def follow() -> None:
        async for m in discovery.watch():
            seen.append(m)

    def on_port_of(url: str) -> ManagedProcess:
        started.append(sim_worker(tmp_path, port=int(url.rsplit(":", 1)[1]),
                                  extra_args=("--max-loras", "3", "--api-key", "k")).start())
        return started[-1]

    task = asyncio.create_task(follow())
    started: list[ManagedProcess] = []
    try:
        await until(lambda: len(instances()) == 2, 10, "the two answering workers (the key was sent)")
        assert all(r.max_loras == 3 and r.slots == 8 and r.base_models == ("sim-base",)
                   for r in seen[-1].workers.values())
        on_port_of(late)
        await until(lambda: len(instances()) == 3, 10, "a worker that starts late joins")
        before = instances()
        procs[0].kill()
        await until(lambda: a in discovery.unanswered, 5, "a probe round sees the worker down")
        on_port_of(a)
        await until(lambda: instances()[a] != before[a], 10, "its comeback is a new instance")
        assert instances()[b] == before[b] and len(instances()) == 3
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for p in started:
            p.kill()


async def test_status_json_shape(etcd: EmbeddedEtcd, clients: MakeClient) -> None:
    client = await clients()
    registration = await WorkerRegistry(client).register(
        WorkerRecord(id="w1", url="http://h:1", base_models=("base",), slots=4, instance="i-1"), ttl=10)
    await CatalogStore(client).put(AdapterRecord(name="a", source="/x/a", base_model="base"))
    await CatalogStore(client).put(AdapterRecord(name="b", source="/x/b", base_model="base"))
    await client.put("placement", encode(Placement(epoch=1, replica_sets={"a": ReplicaSet(workers=("w1",),
                                                                                           replicas=1)})))
    argv = [sys.executable, "-m", "router", "status", "--etcd", etcd.endpoint, "--etcd-prefix", "/t", "--json"]
    empty_leader = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=30)
    assert json.loads(empty_leader.stdout)["leader"] is None

    election = LeaderElection(client, "router-7", ttl=5)
    task = asyncio.create_task(election.run())
    try:
        await until(lambda: election.is_leader, 5, "a leader")
        done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await election.resign()
        await registration.withdraw()
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    unreachable = status["workers"][0].pop("error")
    assert unreachable.startswith("GET http://h:1/v1/models: ")
    assert status == {
        "workers": [{"id": "w1", "url": "http://h:1", "base_model": "base", "slots": 4, "instance": "i-1",
                     "holds": []}],
        "leader": "router-7",
        "adapters": {"a": {"replicas": ["w1"], "holders": [], "failures": {"w1": unreachable}, "failed": None},
                     "b": {"replicas": [], "holders": [], "failures": {}, "failed": None}},
    }
    human = await asyncio.to_thread(subprocess.run, argv[:-1], capture_output=True, text=True, timeout=30)
    assert "w1" in human.stdout and "leader: (none)" in human.stdout


def test_status_without_etcd_is_a_clear_error() -> None:
    done = subprocess.run([sys.executable, "-m", "router", "status", "--etcd", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1 and "EtcdUnavailable" in done.stderr and "Traceback" not in done.stderr
