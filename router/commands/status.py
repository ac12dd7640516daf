"""`lora-router status`: a fleet as etcd and its workers tell it: workers, leader, catalog adapters, where each
adapter is placed, which workers hold it (each worker's /v1/models, the only source of truth for holdings),
and why a placed adapter is not held or a worker could not be asked."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
import msgspec

from discovery.connect import add_etcd_arguments, client_from_args
from discovery.election import LEADER
from discovery.errors import DiscoveryError
from discovery.registry import WorkerRegistry
from discovery.stores import CatalogStore, PlacementStore
from router.core.records import AdapterRecord, WorkerRecord
from router.keyrefs import KeyRefUnresolved, resolve_key_ref
from router.workers import AdapterRejected, WorkerCallFailed, WorkerClient

HELP = ("Show a fleet from etcd and its workers: registered workers, the leader, catalog adapters with their "
        "replica sets, holders and failures, and for an adapter marked failed, why.")

Listing = set[str] | str
"""What a worker's /v1/models said: the adapters it holds, or why it could not be read."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_etcd_arguments(p)
    p.add_argument("--worker-api-key-file", default=None, metavar="FILE",
                   help="the workers' API key (first line), for workers whose record names no key reference")
    p.add_argument("--worker-timeout", type=float, default=5.0, metavar="S",
                   help="seconds to wait for each worker's /v1/models (default 5)")
    p.add_argument("--json", action="store_true",
                   help='print {"workers": [{..., "holds": [...], "error": reason|null}], "leader": id|null, '
                        '"adapters": {name: {"replicas": [...], "holders": [...], "failures": {worker: reason}, '
                        '"failed": {reason, detail, workers, since}|null}}}')


async def fleet_status(args: argparse.Namespace) -> dict[str, Any]:
    client = await client_from_args(args)
    try:
        membership = await WorkerRegistry(client).read()
        leader = await client.get(LEADER)
        catalog = await CatalogStore(client).list()
        placement = await PlacementStore(client).read()
    finally:
        await client.close()
    workers = list(membership.workers.values())
    listings = await _list_workers(workers, _global_key(args.worker_api_key_file), args.worker_timeout)
    return summarize(workers, leader.value.decode(errors="replace") if leader is not None else None, catalog,
                     placement.replica_sets if placement is not None else {}, listings)


def summarize(workers: Iterable[WorkerRecord], leader: str | None, catalog: Mapping[str, AdapterRecord],
              replica_sets: Mapping[str, Any], listings: Mapping[str, Listing]) -> dict[str, Any]:
    """The status document (pure): a placed worker that answered but lacks the adapter is a failure
    ("not loaded"); one that could not be asked carries its own reason."""
    def failures(name: str) -> dict[str, str]:
        placed = replica_sets[name].workers if name in replica_sets else ()
        out = {}
        for worker in placed:
            listing = listings.get(worker, "not registered")
            if isinstance(listing, str):
                out[worker] = listing
            elif name not in listing:
                out[worker] = "not loaded"
        return out

    def worker(w: WorkerRecord) -> dict[str, Any]:
        listing = listings[w.id]
        return {"id": w.id, "url": w.url, "base_model": w.base_models[0], "slots": w.slots, "instance": w.instance,
                "holds": sorted(listing) if isinstance(listing, set) else [],
                "error": listing if isinstance(listing, str) else None}

    return {
        "workers": [worker(w) for w in workers],
        "leader": leader,
        "adapters": {name: {"replicas": list(replica_sets[name].workers) if name in replica_sets else [],
                            "holders": sorted(w for w, h in listings.items() if isinstance(h, set) and name in h),
                            "failures": failures(name),
                            "failed": msgspec.to_builtins(catalog[name].failed)} for name in catalog},
    }


def _global_key(path: str | None) -> str | None:
    return resolve_key_ref("file:" + path) if path else None


async def _list_workers(workers: list[WorkerRecord], global_key: str | None, timeout_s: float) -> dict[str, Listing]:
    """Every worker's /v1/models at once, with the key its record refers to (else the global one)."""
    async with aiohttp.ClientSession() as session:
        client = WorkerClient(session, global_key, timeout_s)
        keys = {}
        for w in workers:
            try:
                if w.api_key_ref:
                    keys[w.url] = resolve_key_ref(w.api_key_ref)
            except KeyRefUnresolved:
                pass  # as in the router: the global key is tried; a 401 then says so for this worker
        client.set_worker_keys(keys)

        async def listing(w: WorkerRecord) -> Listing:
            try:
                return await client.list_adapters(w.url)
            except (WorkerCallFailed, AdapterRejected) as exc:
                return str(exc)

        found = await asyncio.gather(*(listing(w) for w in workers))
    return {w.id: f for w, f in zip(workers, found, strict=True)}


def render(status: dict[str, Any]) -> str:
    lines = [f"leader: {status['leader'] or '(none)'}", f"workers: {len(status['workers'])}"]
    lines += [f"  {w['id']:<16} {w['url']:<32} {w['base_model']:<24} slots={w['slots']:<3} instance={w['instance']}"
              + (f"  holds {len(w['holds'])}" if w["error"] is None else f"  ERROR: {w['error']}")
              for w in status["workers"]]
    lines.append(f"adapters: {len(status['adapters'])}")
    for name, a in status["adapters"].items():
        lines.append(f"  {name:<32} replicas: {', '.join(a['replicas']) or '(none)'}"
                     f"  holders: {', '.join(a['holders']) or '(none)'}{_failed(a['failed'])}")
        lines += [f"    failed on {worker}: {reason}" for worker, reason in a["failures"].items()]
    return "\n".join(lines)


def _failed(failed: dict[str, Any] | None) -> str:
    return f"  FAILED ({failed['reason']}): {failed['detail']}" if failed else ""


def run(args: argparse.Namespace) -> int:
    try:
        status = asyncio.run(fleet_status(args))
    except (DiscoveryError, OSError, ValueError, KeyRefUnresolved) as exc:
        print(f"lora-router status: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(msgspec.json.encode(status).decode() if args.json else render(status))
    return 0
