"""What a fleet costs etcd in steady state: writes/s and bytes per worker.

Starts an embedded etcd, registers N workers (the registrar's registry calls:
one leased record each, keepalive every TTL/3), runs R routers (election
candidate + membership watch + demand report every tick), lets it settle,
then reads etcd's own /metrics twice, `--window` seconds apart, and prints
the differences. Usage: .venv/bin/python scripts/etcd_steady_state.py [--workers 50]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
import urllib.request
from pathlib import Path

from allocator.model import Demand
from discovery.election import LeaderElection
from discovery.embedded import EmbeddedEtcd
from discovery.etcd import EtcdClient
from discovery.records import encode, worker_id_for
from discovery.registry import WORKERS, WorkerRegistry
from discovery.stores import DemandStore
from router.core.records import WorkerRecord

COUNTERS = {
    "raft proposals committed": r"etcd_server_proposals_committed_total",
    "mvcc puts": r"etcd_mvcc_put_total",
    "mvcc txns": r"etcd_mvcc_txn_total",
    "keepalive messages": r'grpc_server_msg_received_total\{[^}]*grpc_method="LeaseKeepAlive"[^}]*\}',
    "client bytes received": r"etcd_network_client_grpc_received_bytes_total",
    "client bytes sent": r"etcd_network_client_grpc_sent_bytes_total",
}


def scrape(endpoint: str) -> dict[str, float]:
    with urllib.request.urlopen(endpoint + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return {name: sum(float(m) for m in re.findall(rf"^{pattern}\s+([0-9.eE+]+)$", text, re.MULTILINE))
            for name, pattern in COUNTERS.items()}


async def measure(endpoint: str, workers: int, routers: int, ttl: int, tick_s: float, window_s: float) -> None:
    clients = [await EtcdClient.connect([endpoint]) for _ in range(workers + routers)]
    records = [WorkerRecord(id=worker_id_for(f"http://10.0.{i // 250}.{i % 250}:8000"),
                            url=f"http://10.0.{i // 250}.{i % 250}:8000", base_models=("meta-llama/Llama-3.1-8B",),
                            slots=8, max_loras=8, instance=f"{int(time.time())}-0123456789ab",
                            labels={"zone": "a"}, registered_at=time.time()) for i in range(workers)]
    regs = [await WorkerRegistry(c).register(r, ttl) for c, r in zip(clients, records, strict=True)]
    tasks: list[asyncio.Task[None]] = []

    async def router(i: int, client: EtcdClient) -> None:
        election = LeaderElection(client, f"router-{i}", ttl=ttl)
        tasks.append(asyncio.create_task(election.run()))
        demand = DemandStore(client, ttl=ttl)

        async def watch() -> None:
            async for _ in WorkerRegistry(client).watch():
                pass

        tasks.append(asyncio.create_task(watch()))
        demand_by_adapter = {f"adapter-{a}": Demand(rps=1.5, inflight=2.0) for a in range(20)}
        while True:
            await demand.publish(f"router-{i}", demand_by_adapter)
            await asyncio.sleep(tick_s)

    for i in range(routers):
        tasks.append(asyncio.create_task(router(i, clients[workers + i])))
    await asyncio.sleep(max(ttl, tick_s) + 1)
    before, t0 = scrape(endpoint), time.monotonic()
    await asyncio.sleep(window_s)
    after, t1 = scrape(endpoint), time.monotonic()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for reg in regs:
        await reg.withdraw()
    for c in clients:
        await c.close()

    rate = {k: (after[k] - before[k]) / (t1 - t0) for k in COUNTERS}
    record_bytes = len(encode(records[0])) + len(f"/lora-router/{WORKERS}{records[0].id}")
    print(f"steady state: {workers} workers (TTL {ttl}s), {routers} routers (tick {tick_s}s), "
          f"window {t1 - t0:.1f}s")
    for name, value in rate.items():
        print(f"  {name:<26} {value:10.1f}/s")
    print(f"  etcd writes/s (raft proposals)       {rate['raft proposals committed']:.2f} "
          f"(demand reports {routers}/{tick_s:g}s = {routers / tick_s:.2f}/s; keepalives are not raft writes)")
    print(f"  worker record size (key + value)      {record_bytes} B stored per worker")
    per_worker = (rate["client bytes received"] + rate["client bytes sent"]) / workers
    print(f"  client traffic per worker            {per_worker:.0f} B/s (all gRPC, both ways, routers' included)")
    print(f"  keepalives per worker                {rate['keepalive messages'] / workers:.2f}/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=50, help="registered workers (default 50)")
    p.add_argument("--routers", type=int, default=3, help="routers (default 3)")
    p.add_argument("--ttl", type=int, default=10, help="lease TTL in seconds (default 10, the registrar default)")
    p.add_argument("--tick", type=float, default=2.0, help="router demand tick in seconds (default 2)")
    p.add_argument("--window", type=float, default=20.0, help="measurement window in seconds (default 20)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        etcd = EmbeddedEtcd(Path(tmp) / "data")
        etcd.start()
        try:
            asyncio.run(measure(etcd.endpoint, args.workers, args.routers, args.ttl, args.tick, args.window))
        finally:
            etcd.kill()


if __name__ == "__main__":
    main()
