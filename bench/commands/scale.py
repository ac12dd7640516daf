"""`lora-bench scale`: one router's memory with a large fleet (1,000 workers, 10,000 catalog adapters).

The workers are registry records pointing at closed loopback ports, so the
router holds, places and reconciles a fleet of that size while no GPU exists;
the figure that matters is the router's resident memory once it has watched
everything, computed the placement and started its per-worker reconcilers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import uvloop

from discovery.embedded import EmbeddedEtcd
from discovery.etcd import EtcdClient
from discovery.ports import free_port
from discovery.records import encode
from discovery.stores import CatalogStore
from router.core.records import AdapterRecord, WorkerRecord
from router.procs import ManagedProcess, python_cli
from router.waiting import wait_until

HELP = "Measure one router's RSS with a large fleet of registered workers and catalog adapters."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1000, help="registered workers (default 1000)")
    p.add_argument("--adapters", type=int, default=10000, help="catalog adapters (default 10000)")
    p.add_argument("--settle-s", type=float, default=20.0, help="seconds to watch RSS after placement (default 20)")
    p.add_argument("--json", dest="json_out", default=None, help="write the figures as JSON here")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _populate(endpoint: str, workers: int, adapters: int) -> None:
    client = await EtcdClient.connect([endpoint])
    lease = await client.lease(600).start()
    closed = free_port()
    for i in range(workers):
        record = WorkerRecord(id=f"w{i}", url=f"http://127.0.0.1:{closed}/w{i}", base_models=("sim-base",),
                              slots=16, instance="1", registered_at=time.time())
        await lease.put(f"workers/w{i}", encode(record))
    catalog = CatalogStore(client)
    names = [f"adapter-{i:05d}" for i in range(adapters)]
    for start in range(0, adapters, 200):
        await asyncio.gather(*(catalog.put(AdapterRecord(name=n, source=f"/models/{n}", base_model="sim-base"))
                               for n in names[start:start + 200]))
    await client.close()


def _status(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/router/status", timeout=30) as r:
        return json.loads(r.read())


def run(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="lora-bench-scale-"))
    etcd = EmbeddedEtcd(root / "etcd")
    etcd.start()
    router: ManagedProcess | None = None
    try:
        t0 = time.monotonic()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_populate(etcd.endpoint, args.workers, args.adapters))
        print(f"registered {args.workers} workers and {args.adapters} adapters in {time.monotonic() - t0:.1f}s")
        port = free_port()
        router = ManagedProcess(python_cli("router", "serve", "--port", str(port), "--etcd", etcd.endpoint,
                                           "--log-level", "ERROR"),
                                health_url=f"http://127.0.0.1:{port}/health", log_path=root / "router.log")
        router.start(timeout_s=60)
        t1 = time.monotonic()

        def sees_all() -> bool:
            status = _status(port)
            return bool(len(status["workers"]) >= args.workers and status["adapters"] >= args.adapters
                        and status["placement_epoch"] >= 1 and status.get("placement_computed_at"))

        wait_until(sees_all, timeout_s=300, what="the router seeing the whole fleet and a placement", interval_s=0.5)
        ready_s = time.monotonic() - t1
        samples = [rss_mb(router.pid)]
        end = time.monotonic() + args.settle_s
        while time.monotonic() < end:
            time.sleep(1.0)
            samples.append(rss_mb(router.pid))
        figures = {"workers": args.workers, "adapters": args.adapters, "seconds_to_full_view": round(ready_s, 1),
                   "rss_mb_at_placement": round(samples[0], 1), "rss_mb_peak": round(max(samples), 1),
                   "rss_mb_end": round(samples[-1], 1)}
        print(f"router saw the fleet and placed it in {ready_s:.1f}s; RSS at placement {samples[0]:.0f} MB, "
              f"peak over {args.settle_s:.0f}s {max(samples):.0f} MB, end {samples[-1]:.0f} MB (target <= 200 MB)")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(figures, indent=2))
        return 0
    finally:
        if router is not None:
            router.stop()
        etcd.stop()
