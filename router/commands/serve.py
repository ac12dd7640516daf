"""`lora-router serve`: run the router (and, with no etcd given, an embedded etcd beside it)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import uvloop

from allocator.config import ConfigError
from discovery.embedded import EmbeddedEtcd
from router.clikit import UsageError
from router.config import load_config
from router.procs import ManagedProcess, python_cli
from router.server import ServeOptions, default_state_dir, listen, serve

HELP = "Run the router: OpenAI-compatible proxy, admin API, placement and reconciliation."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="router config file (YAML); defaults apply when omitted")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000; 0 = any free port)")
    p.add_argument("--etcd", help="comma-separated etcd endpoints; omitted = start an embedded etcd")
    p.add_argument("--worker", action="append", default=[], metavar="URL",
                   help="a worker URL (repeatable): static discovery instead of the etcd worker registry")
    p.add_argument("--router-id", default=None, help="this router's id (default: hostname-pid)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N router processes on one port (SO_REUSEPORT), each a full router")
    p.add_argument("--state-dir", default=None, help="where the embedded etcd keeps its data")
    p.add_argument("--etcd-prefix", default="/lora-router", help="key prefix in etcd (default /lora-router)")
    p.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT (set for --workers children)")
    p.add_argument("--log-level", default="INFO", type=_log_level,
                   help="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return int(text)


def _log_level(text: str) -> str:
    if not isinstance(logging.getLevelName(text.upper()), int):
        raise argparse.ArgumentTypeError(f"{text!r} is not a level (DEBUG, INFO, WARNING, ERROR or CRITICAL)")
    return text.upper()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        loaded = load_config(args.config)
        # With --workers N the children listen; the parent's bind only proves the port is free for them.
        listener = listen(args.host, args.port, reuse_port=args.reuse_port or args.workers > 1)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    if args.workers > 1:
        listener.close()
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
            return _run_children(args, router_id, endpoints)
        options = ServeOptions(config=args.config, host=args.host, port=args.port, etcd=endpoints,
                               workers=args.worker, router_id=router_id, etcd_prefix=args.etcd_prefix)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(options, loaded, listener))
        return 0
    finally:
        if embedded is not None:
            embedded.stop()


def _run_children(args: argparse.Namespace, router_id: str, endpoints: list[str]) -> int:
    """N full routers on one port; the parent only supervises and forwards SIGTERM."""
    children = []
    for i in range(args.workers):
        argv = python_cli("router", "serve", "--host", args.host, "--port", str(args.port),
                          "--etcd", ",".join(endpoints), "--router-id", f"{router_id}-{i}",
                          "--etcd-prefix", args.etcd_prefix, "--reuse-port", "--log-level", args.log_level)
        if args.config:
            argv += ["--config", args.config]
        for url in args.worker:
            argv += ["--worker", url]
        children.append(ManagedProcess(argv).start())
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            child.signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [child.proc.wait() for child in children if child.proc is not None]
    return 0 if stopping else max(codes, default=0)
