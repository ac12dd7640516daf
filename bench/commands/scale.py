"""`lora-bench scale`: routers on a large fleet in a real etcd: memory, etcd bytes per change, apply time.

The workers are registry records pointing at a closed loopback port, so the routers hold, place and
reconcile a fleet of that size while no GPU exists. Once every router sees the fleet and a placement,
workers join and leave one at a time; for each change the bench's own watch of the placement keys counts
the replica sets and bytes the leader wrote, and every router's `/v1/loras/{name}` is polled for a set
that changed until it shows the new workers: the time from the change's last write to each router
applying it. Resident memory is read from /proc; etcd's database size from its /metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import uvloop
import xxhash

from allocator.model import ReplicaSet
from discovery.embedded import EmbeddedEtcd
from discovery.etcd import EtcdClient, Put
from discovery.lease import Lease
from discovery.ports import free_port, free_ports
from discovery.records import encode
from discovery.stores import ADAPTERS, EPOCH, PLACEMENT, SETS
from router.core.records import AdapterRecord, PlacementHeader, WorkerRecord
from router.procs import ManagedProcess, python_cli

HELP = ("Routers on a large fleet in a real etcd: RSS, etcd bytes written per placement change, and the time "
        "until every router applied it.")

BASE = "sim-base"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1000, help="registered workers (default 1000)")
    p.add_argument("--adapters", type=int, default=10000, help="catalog adapters (default 10000)")
    p.add_argument("--slots", type=int, default=32, help="slots per worker (default 32)")
    p.add_argument("--routers", type=int, default=3, help="router processes sharing the etcd (default 3)")
    p.add_argument("--changes", type=int, default=6,
                   help="workers joining and leaving, alternately, one at a time (default 6)")
    p.add_argument("--settle-s", type=float, default=10.0, help="seconds to watch RSS after placement (default 10)")
    p.add_argument("--json", dest="json_out", default=None, help="write the figures as JSON here")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def etcd_db_mb(endpoint: str) -> float:
    with urllib.request.urlopen(endpoint + "/metrics", timeout=10) as r:
        text = r.read().decode()
    found = re.search(r"^etcd_mvcc_db_total_size_in_bytes\s+([0-9.eE+]+)$", text, re.MULTILINE)
    return float(found.group(1)) / 2**20 if found else float("nan")


class Fleet:
    """The registered workers (one lease) and the catalog, written straight into etcd."""

    def __init__(self, client: EtcdClient, lease: Lease, slots: int) -> None:
        self.client = client
        self.lease = lease
        self.slots = slots
        self.closed = free_port()

    async def register(self, ids: range) -> None:
        for start in range(0, len(ids), 100):
            await self.client.txn([], [Put(f"workers/w{i:05d}", encode(self._record(i)), self.lease.id)
                                       for i in ids[start:start + 100]])

    def _record(self, i: int) -> WorkerRecord:
        return WorkerRecord(id=f"w{i:05d}", url=f"http://127.0.0.1:{self.closed}/w{i}", base_models=(BASE,),
                            slots=self.slots, instance="1", registered_at=time.time())

    async def withdraw(self, i: int) -> None:
        await self.client.delete(f"workers/w{i:05d}")

    async def catalog(self, adapters: int) -> None:
        names = [f"adapter-{i:06d}" for i in range(adapters)]
        for start in range(0, adapters, 100):
            await self.client.txn([], [Put(ADAPTERS + n, encode(AdapterRecord(name=n, source=f"/models/{n}",
                                                                              base_model=BASE,
                                                                              created_at=1.0)))
                                       for n in names[start:start + 100]])


BUCKETS = 1024
"""The alternative layout measured side by side: replica sets grouped into this many hash buckets, one key each."""


def bucket(name: str) -> int:
    return xxhash.xxh64_intdigest(name.encode()) % BUCKETS


class PlacementTap:
    """The bench's own watch of the placement keys: what each complete epoch wrote, and when it landed.

    It also keeps each set's size, to say what the same epoch would have written had the sets been grouped
    into `BUCKETS` keys (every bucket holding a changed set rewritten whole).
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, Any]] = []
        self._sizes: dict[str, int] = {}
        self._bucket_bytes = [0] * BUCKETS
        self._pending: dict[str, ReplicaSet | None] = {}
        self.current: dict[str, ReplicaSet] = {}
        """Every set as of the latest complete epoch."""
        self.watching = asyncio.Event()
        """Set once the watch is open: what is written after that comes as events."""
        self._bytes = 0
        self._txns: set[int] = set()
        self.changed = asyncio.Event()

    async def run(self, client: EtcdClient) -> None:
        async for change in client.watch_changes(PLACEMENT):
            event = change.event
            if event is None:
                self.watching.set()  # the listing: the bench starts with an empty etcd
                continue
            self._txns.add(event.revision)
            self._bytes += len(event.key) + (len(event.kv.value) if event.kv is not None else 0)
            if event.key.startswith(SETS):
                name = event.key.removeprefix(SETS)
                self._pending[name] = (None if event.kv is None
                                       else msgspec.json.decode(event.kv.value, type=ReplicaSet))
                size = len(name) + len(event.kv.value) + 4 if event.kv is not None else 0  # "name": value,
                self._bucket_bytes[bucket(name)] += size - self._sizes.pop(name, 0)
                if size:
                    self._sizes[name] = size
            elif event.key == EPOCH and event.kv is not None:
                header = msgspec.json.decode(event.kv.value, type=PlacementHeader)
                if header.complete:
                    for name, replica_set in self._pending.items():
                        if replica_set is None:
                            self.current.pop(name, None)
                        else:
                            self.current[name] = replica_set
                    touched = {bucket(n) for n in self._pending}
                    self.epochs.append({"epoch": header.epoch, "at": time.monotonic(), "sets": self._pending,
                                        "bytes": self._bytes, "transactions": len(self._txns),
                                        "bucketed_bytes": sum(self._bucket_bytes[b] + 16 for b in touched)})
                    self._pending, self._bytes, self._txns = {}, 0, set()
                    self.changed.set()

    async def next_epoch(self, after: int, timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while len(self.epochs) <= after:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.01, deadline - time.monotonic()))
        return self.epochs[after]


async def _applied(http: aiohttp.ClientSession, router: str, name: str, tap: PlacementTap) -> float:
    """When the router's view of `name` became what the latest complete epoch says (polled every 5 ms): a
    later epoch may change the same set again, and then that is what the router must show."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        replica_set = tap.current.get(name)
        async with http.get(f"{router}/v1/loras/{name}") as r:
            body = await r.json() if r.status == 200 else {}
        if body.get("replica_set", []) == (list(replica_set.workers) if replica_set is not None else []):
            return time.monotonic()
        await asyncio.sleep(0.005)
    raise TimeoutError(f"{router} did not show the placement's replica set of {name} within 120 s")


async def measure(etcd: EmbeddedEtcd, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    client = await EtcdClient.connect([etcd.endpoint])
    lease = await client.lease(3600).start()
    fleet = Fleet(client, lease, args.slots)
    t0 = time.monotonic()
    await fleet.register(range(args.workers))
    await fleet.catalog(args.adapters)
    populate_s = time.monotonic() - t0
    print(f"registered {args.workers} workers and {args.adapters} adapters in {populate_s:.1f}s", flush=True)
    tap = PlacementTap()
    tapping = asyncio.create_task(tap.run(client))
    await asyncio.wait_for(tap.watching.wait(), 30)  # before any router: starting one blocks this loop
    routers: list[ManagedProcess] = []
    urls: list[str] = []
    try:
        for rid, port in zip(range(args.routers), free_ports(args.routers), strict=True):
            routers.append(ManagedProcess(
                python_cli("router", "serve", "--port", str(port), "--etcd", etcd.endpoint,
                           "--router-id", f"router-{rid}", "--log-level", "ERROR"),
                health_url=f"http://127.0.0.1:{port}/health", log_path=root / f"router-{rid}.log"))
            urls.append(f"http://127.0.0.1:{port}")
        for router in routers:
            router.start(timeout_s=120)
        t1 = time.monotonic()
        first = await tap.next_epoch(0, 600)
        place_s = first["at"] - t1
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            some = sorted(first["sets"])[:: max(1, len(first["sets"]) // 5)][:5]
            await asyncio.gather(*(_applied(http, u, n, tap) for u in urls for n in some))
            ready_s = time.monotonic() - t1
            print(f"{args.routers} routers saw the fleet; the first placement ({len(first['sets'])} sets, "
                  f"{first['bytes'] / 2**20:.1f} MiB in {first['transactions']} transactions) landed "
                  f"{place_s:.1f}s after start, every router had it at {ready_s:.1f}s", flush=True)
            rss_at_placement = [rss_mb(r.pid) for r in routers]
            end = time.monotonic() + args.settle_s
            peak = list(rss_at_placement)
            while time.monotonic() < end:
                await asyncio.sleep(1.0)
                peak = [max(p, rss_mb(r.pid)) for p, r in zip(peak, routers, strict=True)]
            changes = []
            for k in range(args.changes):
                joining = k % 2 == 0
                seen = len(tap.epochs)  # before the change: its epoch may land while the change is written
                began = time.monotonic()
                if joining:
                    await fleet.register(range(args.workers + k, args.workers + k + 1))
                else:
                    await fleet.withdraw(k)
                epoch = await tap.next_epoch(seen, 120)
                moved = sorted(epoch["sets"])
                probe = moved[:: max(1, len(moved) // 3)][:3]
                applied = await asyncio.gather(*(_applied(http, u, n, tap) for u in urls for n in probe))
                changes.append({"kind": "join" if joining else "leave", "sets_written": len(moved),
                                "bytes_written": epoch["bytes"], "transactions": epoch["transactions"],
                                "bytes_if_bucketed": epoch["bucketed_bytes"],
                                "placed_s": epoch["at"] - began,
                                "applied_ms": [round((t - epoch["at"]) * 1000, 1) for t in applied]})
                peak = [max(p, rss_mb(r.pid)) for p, r in zip(peak, routers, strict=True)]
                c = changes[-1]
                print(f"  {c['kind']:<5} {c['sets_written']:>6} sets, {c['bytes_written']:>8} B in "
                      f"{c['transactions']} txn ({c['bytes_if_bucketed']} B in {BUCKETS} buckets); "
                      f"written {c['placed_s'] * 1000:7.0f} ms after the change; "
                      f"every router applied it within {max(c['applied_ms']):6.1f} ms", flush=True)
        applied_all = sorted(ms for c in changes for ms in c["applied_ms"])
        total_sets = len(first["sets"])
        return {
            "workers": args.workers, "adapters": args.adapters, "routers": args.routers,
            "populate_s": round(populate_s, 1), "first_placement_s": round(place_s, 1),
            "all_routers_ready_s": round(ready_s, 1),
            "first_placement": {"sets": total_sets, "bytes": first["bytes"], "transactions": first["transactions"]},
            "rss_mb_at_placement": [round(x, 1) for x in rss_at_placement],
            "rss_mb_peak": [round(x, 1) for x in peak],
            "changes": changes,
            "sets_per_change_mean": statistics.fmean(c["sets_written"] for c in changes) if changes else 0.0,
            "bytes_per_change_mean": statistics.fmean(c["bytes_written"] for c in changes) if changes else 0.0,
            "bytes_per_change_if_bucketed_mean": (statistics.fmean(c["bytes_if_bucketed"] for c in changes)
                                                  if changes else 0.0),
            "bytes_per_set": first["bytes"] / max(1, total_sets),
            "applied_ms_p50": statistics.median(applied_all) if applied_all else None,
            "applied_ms_p99": applied_all[min(len(applied_all) - 1, round(0.99 * (len(applied_all) - 1)))]
            if applied_all else None,
            "applied_ms_max": applied_all[-1] if applied_all else None,
            "etcd_db_mb": round(etcd_db_mb(etcd.endpoint), 1),
        }
    finally:
        for router in routers:
            router.stop()
        tapping.cancel()
        await asyncio.gather(tapping, return_exceptions=True)
        await lease.revoke()
        await client.close()


def run(args: argparse.Namespace) -> int:
    root = Path(tempfile.mkdtemp(prefix="lora-bench-scale-"))
    etcd = EmbeddedEtcd(root / "etcd")
    etcd.start()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            figures = runner.run(measure(etcd, args, root))
    finally:
        etcd.stop()
    print(f"RSS per router at placement {figures['rss_mb_at_placement']} MB, peak {figures['rss_mb_peak']} MB; "
          f"a change wrote {figures['sets_per_change_mean']:.1f} sets ({figures['bytes_per_change_mean']:.0f} B) "
          f"on average ({figures['bytes_per_change_if_bucketed_mean']:.0f} B in {BUCKETS} buckets), "
          f"the first placement {figures['first_placement']['sets']} "
          f"({figures['first_placement']['bytes']} B); applied by every router p50 {figures['applied_ms_p50']} ms, "
          f"p99 {figures['applied_ms_p99']} ms; etcd database {figures['etcd_db_mb']} MB")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(figures, indent=2))
    return 0
