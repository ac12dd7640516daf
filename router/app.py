"""The aiohttp application: routes, and the one place errors are rendered and logged."""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from router.errors import (
    AnswerCut,
    ClientClosedRequest,
    ExpectationFailed,
    HttpStatusError,
    PayloadTooLarge,
    RouterError,
)
from router.logs import ACCESS
from router.proxy import ADAPTER, REQUEST_ID, REQUEST_ID_HEADER, TENANT, WORKER, Proxy

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPENAPI = (Path(__file__).parent / "openapi.json").read_bytes()
"""The API's OpenAPI document, served as is; tests/hostile checks it lists every route."""
STARTED = web.RequestKey("started", float)
"""When an inference request reached its handler: time to first byte is measured from it."""
PROXY = web.AppKey("proxy", Proxy)
"""The request path, and what the other routes read through it: the live config, the state, the metrics."""
READY = web.AppKey[Callable[[], bool]]("ready")
BEFORE_SCRAPE = web.AppKey[Callable[[], None]]("before_scrape")
"""Sets the gauges that mirror live state (leadership, etcd reachability) just before a scrape."""
STARTED_AT = web.AppKey("started_at", float)
USABLE_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
"""A client's x-request-id is kept when it is short visible ASCII; anything else is replaced."""


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
    return resource.canonical if resource is not None else request.path


async def expect_continue(request: web.Request) -> web.Response | None:
    """`Expect: 100-continue` is the router's to answer (it is never forwarded): the client is asked
    for its body only when its key is good and the announced body fits; else it gets the error at
    once, without uploading, and the connection closes (the unsent body cannot be skipped)."""
    px = request.app[PROXY]
    try:
        if request.headers.get("Expect", "").lower() != "100-continue":
            raise ExpectationFailed("Only 'Expect: 100-continue' is supported.")
        px.auth.caller(request.headers.get("Authorization"))
        limit = px.config.security.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"Request body of {request.content_length} bytes exceeds the limit of {limit}.")
    except RouterError as error:
        response = _error_response(error)
        response.force_close()
        return response
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer proper has not started
    return None


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RouterError as error:
        px = request.app[PROXY]
        px.metrics.requests.labels(_route(request), "", str(error.status)).inc()
        if error.status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.path, error.status, error.message)
        return _error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error_response(HttpStatusError(exc.status, exc.reason))
    except asyncio.CancelledError:  # the client went away: counted, as nginx does, as 499
        request.app[PROXY].metrics.requests.labels(_route(request), "", str(ClientClosedRequest.status)).inc()
        raise


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


def _inference(handler: Handler) -> Handler:
    """Counts the request in flight while its handler runs, marks its arrival for `_first_byte`,
    settles its request id, and counts (and, with the access log on, logs) its outcome per tenant."""
    async def counted(request: web.Request) -> web.StreamResponse:
        request[STARTED] = started = time.monotonic()
        given = request.headers.get(REQUEST_ID_HEADER, "")
        request[REQUEST_ID] = given if USABLE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        metrics = request.app[PROXY].metrics
        metrics.requests_in_flight += 1
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except (RouterError, web.HTTPException) as error:
            status = error.status
            raise
        except AnswerCut:
            status = 502
            raise
        except asyncio.CancelledError:  # aiohttp cancels the handler of a client that went away
            status = ClientClosedRequest.status
            raise
        finally:
            metrics.requests_in_flight -= 1
            metrics.tenant_requests.labels(metrics.tenant(request.get(TENANT)), str(status)).inc()
            if ACCESS.isEnabledFor(logging.INFO):
                _access_line(request, status, started)
    return counted


def _access_line(request: web.Request, status: int, started: float) -> None:
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    fields = {"request_id": request[REQUEST_ID], "method": request.method, "path": request.path,
              "adapter": request.get(ADAPTER), "tenant": request.get(TENANT),
              "worker": request.get(WORKER), "status": status, "latency_ms": latency_ms}
    ACCESS.info("%s %s %d %.1fms adapter=%s tenant=%s worker=%s id=%s", request.method, request.path,
                status, latency_ms, fields["adapter"] or "-", fields["tenant"] or "-",
                fields["worker"] or "-", fields["request_id"], extra=fields)


async def _first_byte(request: web.Request, response: web.StreamResponse) -> None:
    """Runs as the response's head is sent: answers, errors and streams alike."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id
    started = request.get(STARTED)
    if started is not None:
        request.app[PROXY].metrics.first_byte(request.get(ADAPTER), time.monotonic() - started)


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
    inference = _inference(proxy.handle)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, inference, expect_handler=expect_continue)
    app.on_response_prepare.append(_first_byte)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    if extra_routes is not None:
        extra_routes(app)
    return app
