"""`lora-router serve`: run the router (and, with no etcd given, an embedded etcd beside it)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop
from prometheus_client.multiprocess import mark_process_dead

from discovery.embedded import EmbeddedEtcd
from router.metrics import MULTIPROC_DIR
from router.procs import ManagedProcess, python_cli
from router.server import ServeOptions, default_state_dir, serve

HELP = "Run the router: OpenAI-compatible proxy, admin API, placement and reconciliation."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="router config file (YAML); defaults apply when omitted")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000; 0 = any free port)")
    p.add_argument("--etcd", help="comma-separated etcd endpoints; omitted = start an embedded etcd")
    p.add_argument("--worker", action="append", default=[], metavar="URL",
                   help="a worker URL (repeatable): static discovery instead of the etcd worker registry")
    p.add_argument("--router-id", default=None, help="this router's id (default: hostname-pid)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N router processes on one port (SO_REUSEPORT), each a full router")
    p.add_argument("--state-dir", default=None, help="where the embedded etcd keeps its data")
    p.add_argument("--etcd-prefix", default="/lora-router", help="key prefix in etcd (default /lora-router)")
    p.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT (set for --workers children)")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    router_id = args.router_id or f"{socket.gethostname()}-{os.getpid()}"
    embedded: EmbeddedEtcd | None = None
    endpoints = [e.strip() for e in args.etcd.split(",") if e.strip()] if args.etcd else []
    if not endpoints:
        state = Path(args.state_dir) if args.state_dir else default_state_dir()
        embedded = EmbeddedEtcd(state / "etcd")
        embedded.start()
        endpoints = [embedded.endpoint]
        logging.getLogger(__name__).info("embedded etcd at %s (data in %s)", embedded.endpoint, state)
    try:
        if args.workers > 1:
            with tempfile.TemporaryDirectory(prefix="lora-router-metrics-") as metrics_dir:
                return _run_children(args, router_id, endpoints, metrics_dir)
        options = ServeOptions(config=args.config, host=args.host, port=args.port, etcd=endpoints,
                               workers=args.worker, router_id=router_id, etcd_prefix=args.etcd_prefix,
                               reuse_port=args.reuse_port)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(options))
        return 0
    finally:
        if embedded is not None:
            embedded.stop()


def _run_children(args: argparse.Namespace, router_id: str, endpoints: list[str], metrics_dir: str) -> int:
    """N full routers on one port; the parent only supervises and forwards SIGTERM.

    They share `metrics_dir` (fresh per start): whichever child a scrape reaches answers for all.
    """
    children = []
    for i in range(args.workers):
        argv = python_cli("router", "serve", "--host", args.host, "--port", str(args.port),
                          "--etcd", ",".join(endpoints), "--router-id", f"{router_id}-{i}",
                          "--etcd-prefix", args.etcd_prefix, "--reuse-port", "--log-level", args.log_level)
        if args.config:
            argv += ["--config", args.config]
        for url in args.worker:
            argv += ["--worker", url]
        children.append(ManagedProcess(argv, env={MULTIPROC_DIR: metrics_dir}).start())
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            child.signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def reap(child: ManagedProcess) -> int:
        """A dead child's gauges leave the scrapes at once; its counts stay in the sums."""
        assert child.proc is not None
        code = child.proc.wait()
        mark_process_dead(child.pid, metrics_dir)
        return code

    with ThreadPoolExecutor(len(children)) as pool:
        codes = list(pool.map(reap, children))
    return 0 if stopping else max(codes, default=0)
