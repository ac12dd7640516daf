"""`lora-router status`: what a fleet's etcd says: workers, leader, catalog adapters and their replica sets."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import msgspec

from discovery.connect import add_etcd_arguments, client_from_args
from discovery.election import LEADER
from discovery.errors import DiscoveryError
from discovery.registry import WorkerRegistry
from discovery.stores import CatalogStore, PlacementStore

HELP = ("Show a fleet from etcd: registered workers, the leader, catalog adapters with their replica sets "
        "and, for an adapter marked failed, why.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_etcd_arguments(p)
    p.add_argument("--json", action="store_true",
                   help='print {"workers": [...], "leader": id|null, '
                        '"adapters": {name: {"replicas": [...], "failed": {reason, detail, workers, since}|null}}}')


async def fleet_status(args: argparse.Namespace) -> dict[str, Any]:
    client = await client_from_args(args)
    try:
        membership = await WorkerRegistry(client).read()
        leader = await client.get(LEADER)
        catalog = await CatalogStore(client).list()
        placement = await PlacementStore(client).read()
    finally:
        await client.close()
    sets = placement.replica_sets if placement is not None else {}
    return {
        "workers": [{"id": w.id, "url": w.url, "base_model": w.base_models[0], "slots": w.slots,
                     "instance": w.instance} for w in membership.workers.values()],
        "leader": leader.value.decode(errors="replace") if leader is not None else None,
        "adapters": {name: {"replicas": list(sets[name].workers) if name in sets else [],
                            "failed": msgspec.to_builtins(record.failed)} for name, record in catalog.items()},
    }


def render(status: dict[str, Any]) -> str:
    lines = [f"leader: {status['leader'] or '(none)'}", f"workers: {len(status['workers'])}"]
    lines += [f"  {w['id']:<16} {w['url']:<32} {w['base_model']:<24} slots={w['slots']:<3} instance={w['instance']}"
              for w in status["workers"]]
    lines.append(f"adapters: {len(status['adapters'])}")
    lines += [f"  {name:<32} replicas: {', '.join(a['replicas']) or '(none)'}{_failed(a['failed'])}"
              for name, a in status["adapters"].items()]
    return "\n".join(lines)


def _failed(failed: dict[str, Any] | None) -> str:
    return f"  FAILED ({failed['reason']}): {failed['detail']}" if failed else ""


def run(args: argparse.Namespace) -> int:
    try:
        status = asyncio.run(fleet_status(args))
    except (DiscoveryError, OSError, ValueError) as exc:
        print(f"lora-router status: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(msgspec.json.encode(status).decode() if args.json else render(status))
    return 0
