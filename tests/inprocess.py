"""A router's request path and HTTP side inside the test's own event loop, wired as router.server wires
them, for tests that need the app but no etcd watchers or control loops."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from discovery.stores import CatalogStore
from router.admin import add_admin_routes
from router.app import build_app
from router.config import LoadedConfig
from router.core.fleetstate import FleetState
from router.demand import DemandCounter
from router.keyrefs import WorkerCredentials
from router.live import LiveConfig
from router.loads import Loader
from router.metrics import RouterMetrics
from router.proxy import Proxy
from router.public import serving
from router.server import listen
from router.upstream import UpstreamPool
from router.workers import WorkerClient


def in_process_app(loaded: LoadedConfig, session: aiohttp.ClientSession, catalog: CatalogStore | None = None,
                   rng: random.Random | None = None) -> tuple[web.Application, Proxy, FleetState]:
    """The aiohttp app (with the admin routes when `catalog` is given), the request path and the state
    it routes on."""
    live, state, metrics, demand = LiveConfig(loaded), FleetState(), RouterMetrics(10), DemandCounter()
    workers = WorkerClient(session, loaded.secrets.worker_api_key, loaded.config.timeouts.worker_call_s)
    credentials = WorkerCredentials(state, workers)
    credentials.configure(loaded.secrets.worker_api_key)
    proxy = Proxy(live, state, upstream=UpstreamPool(loaded.config.timeouts.connect_s, loaded.config.timeouts.read_s),
                  loads=Loader(state, workers, metrics), metrics=metrics, demand=demand, credentials=credentials,
                  rng=rng or random.Random(0))
    admin = None if catalog is None else (
        lambda app: add_admin_routes(app, catalog, live, state, demand=demand, router_id="in-process"))
    return build_app(proxy, is_ready=lambda: True, extra_routes=admin), proxy, state


@contextlib.asynccontextmanager
async def in_process_router(loaded: LoadedConfig, session: aiohttp.ClientSession, catalog: CatalogStore | None = None,
                            ) -> AsyncIterator[tuple[str, FleetState]]:
    """The router's HTTP side on a free loopback port, as `serve` runs it: its base URL and its state."""
    app, proxy, state = in_process_app(loaded, session, catalog)
    listener = listen("127.0.0.1", 0, reuse_port=False)
    async with serving(app, proxy, listener):
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", state
