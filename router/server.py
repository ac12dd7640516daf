"""One router process: connect the stores, start the loops, serve HTTP, stop cleanly.

The one place the router is wired, in order: config -> etcd (given, or the
embedded one) -> the fleet state (router.core), the request path and the
clients it calls -> stores and election -> the control loop, reconciler,
health prober and config reloader, each handed what it reads and reports to ->
watchers that turn etcd's changes into state events (membership, catalog,
placement) -> the HTTP server.
Every long-running piece is a task in one TaskGroup-like set; the first to
fail stops the process (a router that silently lost its placement watch
would route on stale data forever).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec

from discovery.connect import EtcdSettings, connect
from discovery.election import LeaderElection
from discovery.errors import EtcdUnavailable
from discovery.registry import WorkerRegistry
from discovery.static import StaticDiscovery
from discovery.stores import CatalogStore, DemandStore, PlacementStore
from router.admin import add_admin_routes
from router.app import build_app
from router.catalog_sync import declare_config_adapters
from router.config import LoadedConfig
from router.control import ControlLoop
from router.core.events import CatalogChanged, MembershipChanged, PlacementChanged, RulesChanged
from router.core.fleetstate import FleetState
from router.core.retrybudget import RetryBudget
from router.demand import DemandCounter
from router.health import probe_down_workers
from router.keyrefs import WorkerCredentials
from router.live import LiveConfig
from router.loads import Loader
from router.metrics import RouterMetrics
from router.proxy import Proxy
from router.public import serving
from router.reconciler import Reconciler
from router.reload import ConfigReloader
from router.sources import SourceLocator
from router.upstream import UpstreamPool
from router.workers import WorkerClient

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServeOptions(msgspec.Struct, kw_only=True):
    config: str | None
    host: str = "127.0.0.1"
    port: int = 8000
    etcd: EtcdSettings
    workers: list[str] = []
    router_id: str


def listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    """The listening socket, bound before anything else starts: a port in use is reported at once, before
    etcd is reached or written (raises OSError)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve(options: ServeOptions, loaded: LoadedConfig, listener: socket.socket,
                started: Callable[[int], None] | None = None) -> None:
    client = await _until_etcd_answers("connect to etcd", lambda: connect(options.etcd))
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0),
        auto_decompress=False, skip_auto_headers=("User-Agent",))
    live = LiveConfig(loaded)
    if not live.auth.enabled:
        log.warning("no API keys configured: the router is open to anyone who can reach it")
    state = FleetState(loaded.config.control.health_rules(), loaded.config.prefix.rules())
    metrics = RouterMetrics(loaded.config.metrics_adapter_cap)
    demand = DemandCounter()
    rng = random.Random()
    workers = WorkerClient(session, loaded.secrets.worker_api_key, loaded.config.timeouts.worker_call_s)
    sources = SourceLocator(state)
    workers.locate = sources.path
    credentials = WorkerCredentials(state, workers)
    credentials.configure(loaded.secrets.worker_api_key)
    upstream = UpstreamPool(loaded.config.timeouts.connect_s, loaded.config.timeouts.read_s)
    proxy = Proxy(live, state, upstream=upstream, loads=Loader(state, workers, metrics), metrics=metrics,
                  demand=demand, credentials=credentials, rng=rng)

    def apply_config(new: LoadedConfig) -> None:
        """Everything built from the config takes the new one; requests in flight keep what they took."""
        live.swap(new)
        upstream.configure(new.config.timeouts.connect_s, new.config.timeouts.read_s)
        workers.configure(new.secrets.worker_api_key, new.config.timeouts.worker_call_s)
        credentials.configure(new.secrets.worker_api_key)
        proxy.retry_budget = RetryBudget(new.config.control.retry_budget_ratio)
        state.apply(RulesChanged(new.config.control.health_rules(), new.config.prefix.rules()))

    reloader = ConfigReloader(live, options.config, apply_config, credentials)
    catalog = CatalogStore(client)
    placement_store = PlacementStore(client)
    demand_store = DemandStore(client, ttl=loaded.config.control.lease_ttl_s)
    election = LeaderElection(client, options.router_id, ttl=loaded.config.control.lease_ttl_s)
    static_urls = options.workers or loaded.config.workers
    discovery = (StaticDiscovery(static_urls, api_key=loaded.secrets.worker_api_key) if static_urls
                 else WorkerRegistry(client))
    control = ControlLoop(options.router_id, live, state, demand, metrics, demand_store, placement_store, election,
                          catalog=catalog)
    reconciler = Reconciler(state, workers, metrics, live, estimates=lambda: control.estimates,
                            placement_stale=lambda: not control.etcd_reachable, election=election, rng=rng,
                            catalog=catalog)
    await _until_etcd_answers("declare the config's adapters",
                              lambda: declare_config_adapters(catalog, live.loaded, state.bases()))

    async def follow_membership() -> None:
        async for membership in discovery.watch():
            change = state.apply(MembershipChanged(membership.workers))
            credentials.refresh()
            metrics.workers_changed([*change.added, *change.restarted], change.removed)
            sources.notify()
            if change.changed:
                reconciler.on_membership(change)
                control.trigger()

    async def follow_catalog() -> None:
        async for adapters in catalog.watch():
            state.apply(CatalogChanged(adapters))

    async def follow_placement() -> None:
        async for placement in placement_store.watch():
            state.apply(PlacementChanged(placement))
            metrics.placement_epoch.set(placement.epoch)
            reconciler.on_placement()

    admin = functools.partial(add_admin_routes, catalog=catalog, live=live, state=state, demand=demand,
                              router_id=options.router_id, election=election, reconciler=reconciler,
                              control=control)
    app = build_app(proxy, is_ready=lambda: bool(state.workers) and state.placement_known,
                    before_scrape=control.sample_metrics, started_at=time.time(), extra_routes=admin)
    try:
        async with serving(app, proxy, listener):
            port = int(listener.getsockname()[1])
            log.info("router %s listening on %s:%d", options.router_id, options.host, port)
            if started is not None:
                started(port)
            loops: list[Callable[[], Awaitable[None]]] = [
                follow_membership, follow_catalog, follow_placement, election.run, control.run, reconciler.run,
                lambda: probe_down_workers(state, workers, metrics, live), reloader.run,
            ]
            await _run_until_stopped(loops)
    finally:
        await demand_store.close()
        await election.resign()
        await client.close()
        await session.close()


async def _until_etcd_answers(what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Start-up steps wait for etcd instead of exiting: etcd may start later or be busy (backoff to 5 s)."""
    delay = 0.2
    while True:
        try:
            return await attempt()
        except EtcdUnavailable as exc:
            log.warning("cannot %s yet (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)


async def _run_until_stopped(loops: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run the loops until SIGTERM/SIGINT or until one of them fails (which is then raised).

    A loop that has nothing to do (no config file to watch) may return; that is not a stop.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = {asyncio.create_task(_as_coroutine(f), name=getattr(f, "__name__", "loop")) for f in loops}
    stopper = asyncio.create_task(stop.wait(), name="stop")
    pending: set[asyncio.Task[Any]] = {*tasks, stopper}  # loops' None and stop.wait()'s True: unread
    try:
        while stopper in pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    log.error("%s failed; stopping the router", task.get_name())
                    raise task.exception()  # type: ignore[misc]
    finally:
        for task in [*tasks, stopper]:
            task.cancel()
        await asyncio.gather(*tasks, stopper, return_exceptions=True)


async def _as_coroutine(f: Callable[[], Awaitable[None]]) -> None:
    await f()


def default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "lora-router"
