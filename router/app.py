"""The aiohttp application: the admin and status routes, and the one place their errors are rendered and logged.

The inference routes are the front's (router.front, router.inference); it relays every other route here."""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from router.errors import ClientClosedRequest, HttpStatusError, RouterError
from router.proxy import Proxy

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPENAPI = (Path(__file__).parent / "openapi.json").read_bytes()
"""The API's OpenAPI document, served as is; tests/hostile checks it lists every route."""
PROXY = web.AppKey("proxy", Proxy)
"""The request path, and what the other routes read through it: the live config, the state, the metrics."""
READY = web.AppKey[Callable[[], bool]]("ready")
BEFORE_SCRAPE = web.AppKey[Callable[[], None]]("before_scrape")
"""Sets the gauges that mirror live state (leadership, etcd reachability) just before a scrape."""
STARTED_AT = web.AppKey("started_at", float)


class ModelCard(msgspec.Struct):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "lora-router"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[dict[str, builtins.object]] = []  # `object` here is the field above


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"


def _error_response(error: RouterError) -> web.Response:
    response = web.Response(status=error.status, body=error.body(), content_type="application/json",
                            headers=error.headers)
    if error.closes_connection:
        response.force_close()
    return response


def _route(request: web.Request) -> str:
    """The route's template (/v1/loras/{name}): a label per client-chosen path would grow without bound."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except RouterError as error:
        px = request.app[PROXY]
        px.metrics.requests.labels(_route(request), "", str(error.status)).inc()
        if error.status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.path, error.status, error.message)
        return _error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        refused = HttpStatusError(exc.status, exc.reason)
        if "Allow" in exc.headers:  # a 405 says which methods the route takes
            refused.headers = {"Allow": exc.headers["Allow"]}
        request.app[PROXY].metrics.requests.labels(_route(request), "", str(exc.status)).inc()
        return _error_response(refused)
    except asyncio.CancelledError:  # the client went away: counted, as nginx does, as 499
        request.app[PROXY].metrics.requests.labels(_route(request), "", str(ClientClosedRequest.status)).inc()
        raise
    request.app[PROXY].metrics.requests.labels(_route(request), "", str(response.status)).inc()
    return response


async def health(_request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    if request.app[READY]():
        return web.Response(status=200, text="ready")
    return web.Response(status=503, text="no workers or no placement yet")


async def metrics(request: web.Request) -> web.Response:
    request.app[BEFORE_SCRAPE]()
    px = request.app[PROXY]
    adapters = {px.metrics.adapter(name) for name in px.state.placement.replica_sets}
    return web.Response(body=px.metrics.exposition(px.state.workers.keys(), adapters),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(_request: web.Request) -> web.Response:
    return web.Response(body=OPENAPI, content_type="application/json")


async def list_models(request: web.Request) -> web.Response:
    """Base models, then every adapter and alias this caller may use, in vLLM's shape.

    vLLM puts an adapter's path in `root`; a server path is only for admins here (as in the admin API).
    Everyone else sees the adapter's name there, as for the base models and aliases."""
    px = request.app[PROXY]
    caller = px.auth.caller(request.headers.get("Authorization"))
    created = int(request.app[STARTED_AT])
    bases = sorted(px.state.bases() or ({px.config.base_model} if px.config.base_model else set()))
    cards = [ModelCard(id=b, created=created, root=b) for b in bases]
    for name in sorted(px.state.catalog):
        record = px.state.catalog[name]
        if caller.may_use(name, record.tenant):
            cards.append(ModelCard(id=name, created=created, root=record.source if caller.admin else name,
                                   parent=record.base_model))
    for alias in sorted(px.config.aliases):
        if caller.may_use(alias, None):
            cards.append(ModelCard(id=alias, created=created, root=alias, parent=bases[0] if bases else None))
    return web.Response(body=msgspec.json.encode(ModelList(data=cards)), content_type="application/json")


def build_app(proxy: Proxy, *, is_ready: Callable[[], bool], before_scrape: Callable[[], None] = lambda: None,
              started_at: float = 0.0, extra_routes: Callable[[web.Application], None] | None = None,
              ) -> web.Application:
    """`is_ready`: whether /ready says so (workers known, a placement seen)."""
    app = web.Application(middlewares=[errors], client_max_size=proxy.config.security.max_body_bytes)
    app[PROXY] = proxy
    app[READY] = is_ready
    app[BEFORE_SCRAPE] = before_scrape
    app[STARTED_AT] = started_at
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    if extra_routes is not None:
        extra_routes(app)
    return app
