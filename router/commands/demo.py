"""`lora-router demo`: a complete system on this machine, driven by a short Zipf workload.

Starts an embedded etcd, simulated vLLM workers each with its registrar
sidecar, and one router whose config declares the adapters; sends Zipf
traffic; prints the placement as it changes and a summary; stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import aiohttp
import uvloop

from router.localfleet import LocalFleet
from router.waiting import wait_until_async

WORKER_ARGS = ("--max-loras", "4", "--max-cpu-loras", "8", "--speed", "0.2")

HELP = "Run embedded etcd, simulated workers and a router, send a Zipf workload, print placement and a summary."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=4, help="simulated workers (default 4)")
    p.add_argument("--adapters", type=int, default=50, help="adapters in the catalog (default 50)")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to send traffic (default 20)")
    p.add_argument("--rps", type=float, default=40.0, help="mean request rate, Poisson (default 40)")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of adapter popularity (default 1.1)")
    p.add_argument("--seed", type=int, default=7, help="workload seed (default 7)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) afterwards")


def run(args: argparse.Namespace) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_demo(args))


def _config(root: Path, adapters: list[str]) -> dict[str, object]:
    return {
        "security": {"allowed_path_prefixes": [str(root / "adapters")]},
        "control": {"tick_s": 1.0, "reconcile_s": 2.0, "lease_ttl_s": 3},
        "placement": {"defaults": {"per_replica_rps": 8.0, "min_replicas": 1, "scale_down_cooldown_s": 5.0}},
        "adapters": [{"name": a, "source": str(root / "adapters" / a), "base_model": "sim-base"} for a in adapters],
    }


async def _demo(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="lora-router-demo-"))
    print(f"demo: working directory {root}")
    try:
        with LocalFleet(root) as fleet:
            etcd = fleet.start_etcd()
            names = [f"adapter-{i:02d}" for i in range(args.adapters)]
            fleet.make_adapters(names)
            config = fleet.write_config(_config(root, names))
            workers = fleet.start_workers([WORKER_ARGS] * args.workers)
            fleet.register(workers, slots=12)
            (router,) = fleet.start_routers(config, ["demo-router"], ready=False)
            print(f"demo: etcd {etcd.endpoint}, {args.workers} workers, router {router.url}")
            async with aiohttp.ClientSession() as session:
                await _wait_ready(session, router.url, args.workers)
                stats = await _drive(session, router.url, names, args)
                await _print_placement(session, router.url, final=True)
            _print_summary(stats, args)
            return 0 if stats.failed == 0 else 1
    finally:
        if not args.keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


async def _wait_ready(session: aiohttp.ClientSession, base: str, workers: int, timeout_s: float = 60.0) -> None:
    async def sees_all() -> bool:
        async with session.get(base + "/v1/router/status") as r:
            return r.status == 200 and len((await r.json())["workers"]) >= workers

    await wait_until_async(sees_all, timeout_s=timeout_s, what=f"router at {base} seeing {workers} workers",
                           interval_s=0.2, ignoring=(aiohttp.ClientError,))


class Stats:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.failed = 0
        self.by_worker: dict[str, int] = {}


async def _drive(session: aiohttp.ClientSession, base: str, names: list[str], args: argparse.Namespace) -> Stats:
    rng = random.Random(args.seed)
    weights = [1.0 / (i + 1) ** args.zipf for i in range(len(names))]
    stats = Stats()
    pending: set[asyncio.Task[None]] = set()
    start = time.monotonic()
    next_print = start
    next_send = start
    while time.monotonic() - start < args.seconds:
        now = time.monotonic()
        if now >= next_print:
            await _print_placement(session, base)
            next_print = now + max(2.0, args.seconds / 5)
        if now >= next_send:
            adapter = rng.choices(names, weights)[0]
            task = asyncio.create_task(_one(session, base, adapter, stats))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_send += rng.expovariate(args.rps)
        await asyncio.sleep(max(0.0, min(next_send, next_print) - time.monotonic()))
    if pending:
        await asyncio.wait(pending)
    return stats


async def _one(session: aiohttp.ClientSession, base: str, adapter: str, stats: Stats) -> None:
    body = {"model": adapter, "prompt": "hello", "max_tokens": 8, "ignore_eos": True}
    started = time.monotonic()
    try:
        async with session.post(base + "/v1/completions", json=body) as r:
            await r.read()
            if r.status != 200:
                stats.failed += 1
                return
            worker = r.headers.get("x-lora-router-worker", "?")
            stats.by_worker[worker] = stats.by_worker.get(worker, 0) + 1
    except aiohttp.ClientError:
        stats.failed += 1
        return
    stats.latencies.append(time.monotonic() - started)


async def _print_placement(session: aiohttp.ClientSession, base: str, final: bool = False) -> None:
    async with session.get(base + "/v1/loras") as r:
        loras = (await r.json())["data"]
    hot = sorted(loras, key=lambda a: (-a["demand_rps"], a["name"]))[:8]
    title = "final placement" if final else "placement"
    print(f"\n{title} (top {len(hot)} of {len(loras)} adapters by demand):")
    print(f"  {'adapter':<12} {'rps':>6} {'replicas':>8}  holders")
    for a in hot:
        print(f"  {a['name']:<12} {a['demand_rps']:>6.1f} {a['replicas']:>8}  {', '.join(a['holders'])}")


def _print_summary(stats: Stats, args: argparse.Namespace) -> None:
    lat = sorted(stats.latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    total = len(lat) + stats.failed
    print(f"\nsummary: {total} requests in {args.seconds:.0f}s, {len(lat)} ok, {stats.failed} failed; "
          f"latency p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms")
    print("requests per worker: " + ", ".join(f"{w}={n}" for w, n in sorted(stats.by_worker.items())))
