"""`lora-router register`: the registrar sidecar that announces one vLLM worker in etcd.

Runs beside the worker (same pod): waits for it to be healthy, registers it
under a lease, withdraws it after --health-failures failed checks in a row or
on SIGTERM, and registers it again (new instance id) when it is back.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import aiohttp
from prometheus_client import start_http_server

from discovery.connect import EtcdSettings, add_etcd_arguments, connect, settings_from_args
from discovery.errors import DiscoveryError
from discovery.fetch.fetcher import Fetcher, FetcherConfig
from discovery.fetch.sources import SourceSettings
from discovery.probe import WorkerProbe
from discovery.records import worker_id_for
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
    f = p.add_argument_group("adapter fetching (s3://, https://, hf:// sources; see docs/design.md)")
    f.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="fetch remote adapters into DIR, a directory the worker reads at the same path "
                        "(default: no fetching; remote sources go to the worker unchanged)")
    f.add_argument("--cache-bytes", type=_size, default="20Gi", metavar="SIZE",
                   help="bound on the cache, e.g. 20Gi, 500Mi (default 20Gi)")
    f.add_argument("--max-adapter-bytes", type=_size, default="2Gi", metavar="SIZE",
                   help="refuse a single adapter larger than this (default 2Gi)")
    f.add_argument("--allow-source", action="append", default=[], metavar="PREFIX",
                   help="fetch only sources under PREFIX, e.g. s3://bucket/adapters/ (repeatable; default: any)")
    f.add_argument("--s3-endpoint-url", default=None, metavar="URL",
                   help="an S3-compatible endpoint (credentials come from AWS_* variables or ~/.aws only)")
    f.add_argument("--s3-region", default=None, metavar="REGION", help="the S3 region")
    f.add_argument("--cache-pin-s", type=float, default=300.0, metavar="S",
                   help="an entry fetched in the last S seconds is never evicted: a cold start may be loading it "
                        "outside the placement (default 300)")
    f.add_argument("--fetch-concurrency", type=int, default=2, metavar="N", help="downloads at once (default 2)")
    f.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve the fetcher's Prometheus metrics on this port (default: not served)")
    f.add_argument("--metrics-host", default="0.0.0.0", metavar="HOST", help="address for --metrics-port")


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30, "ti": 1 << 40}


def _size(text: str) -> int:
    """Bytes from 1234, 500Mi, 20Gi, 1G (Kubernetes quantity suffixes)."""
    number = text.rstrip("kKmMgGtTiIbB")
    unit = text[len(number):].lower().removesuffix("b")
    if unit not in _UNITS or not number.isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (want e.g. 1048576, 500Mi, 20Gi)")
    return int(number) * _UNITS[unit]


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


async def _main(etcd: EtcdSettings, config: RegistrarConfig, api_key: str | None,
                fetch: FetcherConfig | None, metrics_addr: tuple[str, int] | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = await connect(etcd, check=False)
    try:
        async with aiohttp.ClientSession() as session:
            probe = WorkerProbe(session, config.worker_url, api_key)
            registrar = Registrar(WorkerRegistry(client), probe, config)
            if fetch is None:
                await registrar.run(stop)
                return
            fetcher = Fetcher(client, config.worker_id or worker_id_for(config.worker_url), fetch,
                              registrar.set_cache, probe.adapters, session)
            await registrar.set_cache(*fetcher.state())
            if metrics_addr is not None:
                start_http_server(metrics_addr[1], metrics_addr[0], registry=fetcher.metrics.registry)
            fetching = asyncio.create_task(fetcher.run(), name="fetcher")
            # A fetcher that dies stops the registrar too: a worker whose adapters can no longer arrive
            # must not stay announced as if they could.
            fetching.add_done_callback(lambda _t: stop.set())
            try:
                await registrar.run(stop)
            finally:
                fetching.cancel()
                await asyncio.gather(fetching, return_exceptions=True)
            if not fetching.cancelled() and fetching.exception() is not None:
                raise fetching.exception()  # type: ignore[misc]
    finally:
        await client.close()


def _fetch_config(args: argparse.Namespace) -> FetcherConfig | None:
    if args.cache_dir is None:
        return None
    if args.max_adapter_bytes > args.cache_bytes or args.fetch_concurrency < 1:
        raise ValueError("--max-adapter-bytes must be <= --cache-bytes and --fetch-concurrency >= 1")
    return FetcherConfig(
        cache_dir=os.path.abspath(args.cache_dir), cache_bytes=args.cache_bytes,
        max_adapter_bytes=args.max_adapter_bytes, max_lora_rank=args.max_lora_rank,
        allowed_prefixes=list(args.allow_source), concurrency=args.fetch_concurrency, pin_s=args.cache_pin_s,
        sources=SourceSettings(s3_endpoint_url=args.s3_endpoint_url, s3_region=args.s3_region))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = RegistrarConfig(
            worker_url=args.worker_url, worker_id=args.worker_id, slots=args.slots, weight=args.weight,
            max_lora_rank=args.max_lora_rank, labels=_labels(args.label), api_key_ref=args.api_key_ref,
            ttl=args.ttl, health_failures=args.health_failures, health_interval_s=args.health_interval,
            cache_dir=os.path.abspath(args.cache_dir) if args.cache_dir else None)
        fetch = _fetch_config(args)
        metrics_addr = (args.metrics_host, args.metrics_port) if args.metrics_port is not None else None
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
        asyncio.run(_main(etcd, config, api_key, fetch, metrics_addr))
    except (DiscoveryError, OSError) as exc:
        log.error("registrar stopped: %s: %s", type(exc).__name__, exc)
        return 1
    return 0
