"""`lora-router serve`: run the router (and, with no etcd given, an embedded etcd beside it)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop
from prometheus_client.multiprocess import mark_process_dead

from allocator.config import ConfigError
from discovery.connect import EtcdSettings, add_etcd_arguments, as_argv, settings_from_args
from discovery.embedded import EmbeddedEtcd, EtcdBinaryNotFound, EtcdStartFailed
from discovery.errors import EtcdAuthFailed
from router.clikit import UsageError
from router.config import load_config
from router.logs import FORMATS
from router.logs import configure as configure_logs
from router.metrics import MULTIPROC_DIR
from router.procs import SUPERVISOR_ENV, ManagedProcess, die_with_supervisor, python_cli
from router.server import ServeOptions, default_state_dir, listen, serve

EMBEDDED_ETCD_PORT = 2379
"""etcd's own default: a `serve` with the embedded etcd is where registrars expect an etcd."""

HELP = "Run the router: OpenAI-compatible proxy, admin API, placement and reconciliation."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=os.environ.get("LORA_ROUTER_CONFIG"),
                   help="router config file (YAML; env LORA_ROUTER_CONFIG); defaults apply when omitted")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port to listen on (default 8000; 0 = any free port)")
    p.add_argument("--worker", action="append", default=[], metavar="URL",
                   help="a worker URL (repeatable): static discovery instead of the etcd worker registry")
    p.add_argument("--router-id", default=None, help="this router's id (default: hostname-pid)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N router processes on one port (SO_REUSEPORT), each a full router")
    p.add_argument("--state-dir", default=None, help="where the embedded etcd keeps its data")
    p.add_argument("--embedded-etcd-port", type=int, default=EMBEDDED_ETCD_PORT, metavar="PORT",
                   help=f"client port of the embedded etcd, the same on every start so registrars find it again "
                        f"(default {EMBEDDED_ETCD_PORT}, its peer port is PORT+1; 0 = any free port)")
    p.add_argument("--embedded-etcd-host", default="127.0.0.1", metavar="ADDR",
                   help="address the embedded etcd serves clients on (default 127.0.0.1; 0.0.0.0 for registrars "
                        "on other machines)")
    p.add_argument("--reuse-port", action="store_true", help="bind with SO_REUSEPORT (set for --workers children)")
    p.add_argument("--log-level", default="INFO", type=_log_level,
                   help="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL (default INFO)")
    p.add_argument("--log-format", choices=FORMATS, default=os.environ.get("LORA_ROUTER_LOG_FORMAT", "text"),
                   help="text, or json: one object per line (default text; env LORA_ROUTER_LOG_FORMAT)")
    p.add_argument("--access-log", action="store_true",
                   help="log one line per inference request: id, adapter, tenant, worker, status, latency")
    add_etcd_arguments(p, "comma-separated etcd endpoints; none anywhere = start an embedded etcd", config_flag=False)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return int(text)


def _log_level(text: str) -> str:
    if not isinstance(logging.getLevelName(text.upper()), int):
        raise argparse.ArgumentTypeError(f"{text!r} is not a level (DEBUG, INFO, WARNING, ERROR or CRITICAL)")
    return text.upper()


def run(args: argparse.Namespace) -> int:
    die_with_supervisor()
    configure_logs(args.log_level, args.log_format, args.access_log)
    try:
        loaded = load_config(args.config)
        etcd = settings_from_args(args)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"etcd settings: {exc}") from None
    try:
        # With --workers N the children listen; the parent's bind only proves the port is free for them.
        listener = listen(args.host, args.port, reuse_port=args.reuse_port or args.workers > 1)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    if args.workers > 1:
        listener.close()
    router_id = args.router_id or f"{socket.gethostname()}-{os.getpid()}"
    embedded: EmbeddedEtcd | None = None
    if not etcd.endpoints:
        state = Path(args.state_dir) if args.state_dir else default_state_dir()
        port = args.embedded_etcd_port
        embedded = EmbeddedEtcd(state / "etcd", client_port=port or None, peer_port=port + 1 if port else None,
                                host=args.embedded_etcd_host)
        try:
            embedded.start()
        except (EtcdStartFailed, EtcdBinaryNotFound) as exc:
            listener.close()
            raise UsageError(f"embedded etcd: {exc}") from None
        etcd = EtcdSettings(endpoints=[embedded.endpoint], prefix=etcd.prefix)
        logging.getLogger(__name__).info("embedded etcd at %s (data in %s)", embedded.endpoint, state)
    try:
        if args.workers > 1:
            with tempfile.TemporaryDirectory(prefix="lora-router-metrics-") as metrics_dir:
                return _run_children(args, router_id, etcd, metrics_dir)
        options = ServeOptions(config=args.config, host=args.host, port=args.port, etcd=etcd,
                               workers=args.worker, router_id=router_id)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(options, loaded, listener))
        return 0
    except EtcdAuthFailed as exc:  # retrying cannot help: the credentials are wrong
        raise UsageError(f"etcd refused this router's credentials: {exc}") from None
    except ConfigError as exc:  # what only the catalog can tell (an adapter named like a served base model)
        raise UsageError(str(exc)) from None
    finally:
        if embedded is not None:
            embedded.stop()


def _run_children(args: argparse.Namespace, router_id: str, etcd: EtcdSettings, metrics_dir: str) -> int:
    """N full routers on one port; the parent only supervises and forwards SIGTERM and SIGHUP (reload).

    They share `metrics_dir` (fresh per start): whichever child a scrape reaches answers for all.
    """
    children = []
    for i in range(args.workers):
        argv = python_cli("router", "serve", "--host", args.host, "--port", str(args.port),
                          *as_argv(etcd), "--router-id", f"{router_id}-{i}",
                          "--reuse-port", "--log-level", args.log_level, "--log-format", args.log_format,
                          *(["--access-log"] if args.access_log else []))
        if args.config:
            argv += ["--config", args.config]
        for url in args.worker:
            argv += ["--worker", url]
        env = {MULTIPROC_DIR: metrics_dir, SUPERVISOR_ENV: str(os.getpid())}
        children.append(ManagedProcess(argv, env=env).start())
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            child.signal(signal.SIGTERM)

    def reload(_sig: int, _frame: object) -> None:
        for child in children:
            child.signal(signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)

    def reap(child: ManagedProcess) -> int:
        """A dead child's gauges leave the scrapes at once; its counts stay in the sums."""
        assert child.proc is not None
        code = child.proc.wait()
        mark_process_dead(child.pid, metrics_dir)
        return code

    with ThreadPoolExecutor(len(children)) as pool:
        codes = list(pool.map(reap, children))
    return 0 if stopping else max(codes, default=0)
