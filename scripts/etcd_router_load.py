"""What real routers cost etcd under a steady workload: writes/s and bytes/s, placement writes included.

etcd_steady_state.py measures registrations and demand reports with stand-in routers; this one runs the
real thing: an embedded etcd, simulated workers with their registrars, R `lora-router serve` processes
and a steady stream of completions spread over A adapters. After the fleet settles it reads etcd's own
/metrics twice, `--window` seconds apart, and meanwhile watches every key of the fleet, so each write is
put down to its writer by its key: each router's demand report, the leader's placement, the registrars'
worker records, the catalog. At the end it reads etcd's database size (compaction on: the embedded etcd
keeps an hour of history).
Usage: .venv/bin/python scripts/etcd_router_load.py [--routers 2 --workers 3 --adapters 10 --rps 20]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from pathlib import Path

import aiohttp
from etcd_steady_state import scrape

from bench.commands.scale import etcd_db_mb as db_mb
from discovery.etcd import EtcdClient
from discovery.stores import PLACEMENT
from router.localfleet import LocalFleet


def writer(key: str) -> str:
    """Who writes a key of the fleet (docs/design.md, etcd key layout)."""
    if key.startswith("load/"):
        return "demand report of " + key.removeprefix("load/")
    if key.startswith(PLACEMENT):
        return "placement (the leader)"
    return {"workers": "worker records (registrars)", "adapters": "catalog", "leader": "election"}.get(
        key.partition("/")[0], "other")


async def _tap(endpoint: str, writes: dict[str, list[int]], stop: asyncio.Event) -> None:
    """Count each writer's puts and bytes (key + value) until `stop`."""
    client = await EtcdClient.connect([endpoint])
    try:
        changes = client.watch_changes("", after=await client.revision())
        async for change in changes:
            if stop.is_set():
                break
            event = change.event
            if event is not None and event.kv is not None:
                count = writes.setdefault(writer(event.key), [0, 0])
                count[0] += 1
                count[1] += len(event.key) + len(event.kv.value)
    finally:
        await client.close()


async def _traffic(routers: list[str], adapters: list[str], rps: float, stop: asyncio.Event) -> int:
    """Completions at `rps`, round robin over routers and adapters; returns how many answered 200."""
    ok = 0
    pending: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession() as http:
        async def one(router: str, model: str) -> None:
            nonlocal ok
            body = {"model": model, "prompt": "x", "max_tokens": 4}
            async with http.post(router + "/v1/completions", json=body) as r:
                await r.read()
                ok += r.status == 200

        start = time.monotonic()
        for n, (router, model) in enumerate(zip(itertools.cycle(routers), itertools.cycle(adapters))):
            if stop.is_set():
                break
            task = asyncio.create_task(one(router, model))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(max(0.0, start + (n + 1) / rps - time.monotonic()))
        await asyncio.gather(*pending, return_exceptions=True)
    return ok


async def measure(endpoint: str, routers: list[str], adapters: list[str], rps: float, settle_s: float,
                  window_s: float) -> None:
    stop = asyncio.Event()
    traffic = asyncio.create_task(_traffic(routers, adapters, rps, stop))
    await asyncio.sleep(settle_s)
    writes: dict[str, list[int]] = {}
    tapped = asyncio.Event()
    tap = asyncio.create_task(_tap(endpoint, writes, tapped))
    before, t0 = scrape(endpoint), time.monotonic()
    await asyncio.sleep(window_s)
    after, t1 = scrape(endpoint), time.monotonic()
    tapped.set()
    tap.cancel()
    stop.set()
    answered = await traffic
    await asyncio.gather(tap, return_exceptions=True)
    rate = {k: (after[k] - before[k]) / (t1 - t0) for k in before}
    print(f"steady workload: {len(routers)} routers, {len(adapters)} adapters, {rps:g} req/s "
          f"({answered} answered 200), window {t1 - t0:.1f}s")
    print(f"  etcd writes/s (raft proposals)  {rate['raft proposals committed']:8.2f}")
    print(f"  client bytes/s received by etcd {rate['client bytes received']:8.0f}")
    print(f"  client bytes/s sent by etcd     {rate['client bytes sent']:8.0f}")
    print(f"  etcd database                   {db_mb(endpoint):8.2f} MB")
    for name, (puts, size) in sorted(writes.items()):
        print(f"  {name:<38} {puts / (t1 - t0):7.2f} puts/s {size / (t1 - t0):9.0f} B/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--routers", type=int, default=2, help="router processes (default 2)")
    p.add_argument("--workers", type=int, default=3, help="simulated workers (default 3)")
    p.add_argument("--adapters", type=int, default=10, help="adapters in the config (default 10)")
    p.add_argument("--rps", type=float, default=20.0, help="completions per second in all (default 20)")
    p.add_argument("--tick", type=float, default=1.0, help="control tick in seconds (default 1)")
    p.add_argument("--settle", type=float, default=15.0, help="seconds of traffic before measuring (default 15)")
    p.add_argument("--window", type=float, default=30.0, help="measurement window in seconds (default 30)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = [f"adapter-{i}" for i in range(args.adapters)]
        with LocalFleet(root) as fleet:
            fleet.make_adapters(names)
            config = fleet.write_config({
                "security": {"allowed_path_prefixes": [str(fleet.adapter_root)]},
                "control": {"tick_s": args.tick},
                "adapters": [{"name": n, "source": str(fleet.adapter_root / n), "base_model": "sim-base"}
                             for n in names]})
            etcd = fleet.start_etcd()
            workers = fleet.start_workers([("--max-loras", "8", "--speed", "0.01")] * args.workers)
            fleet.register(workers, slots=8)
            routers = fleet.start_routers(config, [f"router-{i}" for i in range(args.routers)], ready=False)
            asyncio.run(measure(etcd.endpoint, [r.url for r in routers], names, args.rps, args.settle,
                                args.window))

if __name__ == "__main__":
    main()
