"""`lora-router register`: the registrar sidecar that announces one vLLM worker in etcd.

Runs beside the worker (same pod): waits for it to be healthy, registers it
under a lease, withdraws it after --health-failures failed checks in a row or
on SIGTERM, and registers it again (new instance id) when it is back.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import aiohttp

from discovery.connect import EtcdSettings, add_etcd_arguments, connect, settings_from_args
from discovery.errors import DiscoveryError
from discovery.probe import WorkerProbe
from discovery.registrar import Registrar, RegistrarConfig
from discovery.registry import WorkerRegistry

HELP = "Registrar sidecar: register a vLLM worker in etcd while it is healthy (leased record)."

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_etcd_arguments(p)
    p.add_argument("--worker-url", required=True, help="the worker's base URL as routers reach it (http://host:port)")
    p.add_argument("--worker-id", default=None,
                   help="stable worker id (default: derived from --worker-url, the same on every start)")
    p.add_argument("--api-key-file", default=None, metavar="FILE",
                   help="file whose first line is the worker's API key, sent when probing it (never logged)")
    p.add_argument("--api-key-ref", default=None, metavar="REF",
                   help="where routers find the worker's key (file path or env name); recorded, the key never is")
    p.add_argument("--slots", type=int, default=8, metavar="N",
                   help="adapters the placement may put here, e.g. the worker's --max-cpu-loras (default 8)")
    p.add_argument("--weight", type=float, default=1.0, metavar="W", help="relative capacity (default 1.0)")
    p.add_argument("--max-lora-rank", type=int, default=16, metavar="R",
                   help="the worker's --max-lora-rank (default 16)")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="a label on the record (repeatable)")
    p.add_argument("--ttl", type=int, default=10, metavar="S",
                   help="lease TTL in seconds: a dead registrar's worker disappears after this (default 10)")
    p.add_argument("--health-failures", type=int, default=3, metavar="N",
                   help="withdraw after this many failed health checks in a row (default 3)")
    p.add_argument("--health-interval", type=float, default=2.0, metavar="S",
                   help="seconds between health checks (default 2)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def _labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--label wants KEY=VALUE, got {item!r}")
        labels[key] = value
    return labels


def _api_key(path: str | None) -> str | None:
    if path is None:
        return None
    lines = Path(path).read_text().splitlines()
    return lines[0].strip() if lines and lines[0].strip() else None


async def _main(etcd: EtcdSettings, config: RegistrarConfig, api_key: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = await connect(etcd, check=False)
    try:
        async with aiohttp.ClientSession() as session:
            probe = WorkerProbe(session, config.worker_url, api_key)
            await Registrar(WorkerRegistry(client), probe, config).run(stop)
    finally:
        await client.close()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = RegistrarConfig(
            worker_url=args.worker_url, worker_id=args.worker_id, slots=args.slots, weight=args.weight,
            max_lora_rank=args.max_lora_rank, labels=_labels(args.label), api_key_ref=args.api_key_ref,
            ttl=args.ttl, health_failures=args.health_failures, health_interval_s=args.health_interval)
        if args.slots < 0 or args.ttl < 1 or args.health_failures < 1 or args.health_interval <= 0 or args.weight <= 0:
            raise ValueError("--slots must be >= 0, --ttl and --health-failures >= 1, "
                             "--health-interval and --weight > 0")
        api_key = _api_key(args.api_key_file)
        etcd = settings_from_args(args)
        if not etcd.endpoints:
            raise ValueError("no etcd endpoint: give --etcd, LORA_ROUTER_ETCD or etcd.endpoints in --config")
    except (OSError, ValueError) as exc:
        print(f"lora-router register: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_main(etcd, config, api_key))
    except (DiscoveryError, OSError) as exc:
        log.error("registrar stopped: %s: %s", type(exc).__name__, exc)
        return 1
    return 0
