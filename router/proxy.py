"""The OpenAI-compatible request path: resolve, pick a holder, forward, relay.

The body is forwarded byte for byte; only `model` (and `user`/`stream`) are
decoded. The one rewrite — `BASE@ADAPTER` or an alias to the adapter's own
name — re-encodes the top-level object with every other field kept as raw
JSON. A worker that fails before the client has seen a byte is retried once
on another holder (within the retry budget), and so is a stream whose worker
dies before its first chunk (the first token: the client's answer starts only
with it); after that, a cut stream ends with an SSE error event, never a hang.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import msgspec
from aiohttp import web

from router.bodies import read_body
from router.errors import (
    NOT_JSON,
    AnswerCut,
    BadRequest,
    GatewayTimeout,
    NoWorkerAvailable,
    UpstreamFailed,
)
from router.fleet import WorkerView
from router.names import Target, resolve
from router.outlier import should_eject
from router.picking import pick_with_room, power_of_two
from router.runtime import RouterRuntime
from router.upstream import UpstreamError, UpstreamResponse, UpstreamTimeout

log = logging.getLogger(__name__)

RUNTIME = web.AppKey("runtime", RouterRuntime)
ADAPTER = web.RequestKey("adapter", str)
"""The resolved adapter, for the metrics recorded when the response starts (router.app)."""
TENANT = web.RequestKey("tenant", str)
WORKER = web.RequestKey("worker", str)
"""The last worker tried, for the access log."""
REQUEST_ID = web.RequestKey("request_id", str)
REQUEST_ID_HEADER = "x-request-id"
"""The client's (when usable) or the router's own: forwarded to the worker, returned to the client."""
WORKER_HEADER = "x-lora-router-worker"
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length", "authorization",
})
NOT_FORWARDED = HOP_BY_HOP | {"expect", "content-encoding", REQUEST_ID_HEADER}
"""Request headers the router answers itself: `Expect` (aiohttp sends the client its 100 Continue
when the body is read; the worker gets the whole body at once) and `Content-Encoding` (aiohttp
decodes the body, so the worker gets plain JSON); the request id is sent as the router settled it."""
ADAPTER_MISSING = "adapter_missing"
"""Retry reason of a 404 from a holder: the worker lost the adapter (restart, unload behind our back)."""
BUFFER_LIMIT = 1 << 20
"""Non-streaming bodies up to this size are read whole, so a worker dying mid-body can be retried."""


class RequestFields(msgspec.Struct):
    model: str
    stream: bool | None = None
    user: str | None = None


_decode_fields = msgspec.json.Decoder(RequestFields).decode
_decode_top = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


class _Retry(Exception):
    """This attempt failed before the client saw a byte; another holder may answer."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


async def handle(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME]
    caller = rt.auth.caller(request.headers.get("Authorization"))
    request[TENANT] = caller.tenant or ""
    body = await read_body(request, rt.config.security.max_body_bytes, rt.config.timeouts.client_body_s)
    fields = _parse_fields(body)
    target = resolve(
        fields.model, caller=caller, bases=rt.fleet.bases() or _configured_base(rt),
        catalog=rt.fleet.catalog, aliases=rt.config.aliases,
        sticky_key=fields.user or _header_text(request, rt.config.sticky_header), rng=rt.rng,
    )
    if target.model != fields.model:
        body = _rewrite_model(body, target.model)
    rt.retry_budget.on_request()
    adapter = target.adapter
    if adapter is None:
        return await _forward(request, rt, target, body)
    request[ADAPTER] = adapter
    rt.demand.started(adapter)
    try:
        return await _forward(request, rt, target, body)
    finally:
        rt.demand.finished(adapter)


def _header_text(request: web.Request, name: str) -> str:
    """A header as valid text: aiohttp keeps undecodable bytes as lone surrogates, which no encoder accepts."""
    return request.headers.get(name, "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _configured_base(rt: RouterRuntime) -> frozenset[str]:
    return frozenset({rt.config.base_model} if rt.config.base_model else ())


def _parse_fields(body: bytes) -> RequestFields:
    try:
        return _decode_fields(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        param = "model" if "model" in text else ("stream" if "stream" in text else None)
        raise BadRequest(f"Invalid request body: {text}", param=param) from None
    except NOT_JSON as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None


def _rewrite_model(body: bytes, model: str) -> bytes:
    try:
        top = _decode_top(body)
    except NOT_JSON as exc:  # keys are decoded here, skipped in _parse_fields
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    top["model"] = msgspec.Raw(msgspec.json.encode(model))
    return msgspec.json.encode(top)


def _candidates(rt: RouterRuntime, target: Target, tried: set[str]) -> list[WorkerView]:
    if target.adapter is None:
        views = rt.fleet.base_workers(target.base or target.model)
    else:
        views = rt.fleet.routable_holders(target.adapter)
    return [v for v in views if v.id not in tried] if tried else views


def _forwarded_headers(request: web.Request) -> str:
    """End-to-end request headers as one pre-encoded block; the client's key never reaches a worker."""
    drop = NOT_FORWARDED
    connection = request.headers.get("Connection")
    if connection:
        drop = drop | {t.strip().lower() for t in connection.split(",")}
    request_id = request.get(REQUEST_ID)
    return "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() not in drop) + (
        f"{REQUEST_ID_HEADER}: {request_id}\r\n" if request_id else "")


async def _forward(request: web.Request, rt: RouterRuntime, target: Target, body: bytes) -> web.StreamResponse:
    started = time.monotonic()
    headers = _forwarded_headers(request)
    tried: set[str] = set()
    failed: set[str] = set()
    """Workers not to try again; one that answered 404 is not among them: a cold start may load it there."""
    last_reason = "no holder"
    for attempt in range(2):
        views = _candidates(rt, target, failed)
        if not views and target.adapter is not None:
            await rt.cold.ensure_loaded(target.adapter)
            views = _candidates(rt, target, failed)
        if not views:
            break
        if attempt and not rt.retry_budget.try_spend():
            last_reason = "retry budget exhausted"
            break
        view = await _pick(rt, target, views, failed)
        tried.add(view.id)
        last_chance = attempt == 1 or (len(views) == 1 and target.adapter is None)
        try:
            return await _attempt(request, rt, target, view, body, headers, started, last_chance)
        except _Retry as retry:
            last_reason = retry.reason
            rt.metrics.retries.labels(retry.reason).inc()
            if retry.reason != ADAPTER_MISSING:
                failed.add(view.id)
    if tried:
        raise UpstreamFailed(f"No worker answered for model '{target.model}' ({last_reason}).")
    raise NoWorkerAvailable(f"No healthy worker serves model '{target.model}'.", headers={"Retry-After": "1"})


async def _pick(rt: RouterRuntime, target: Target, views: list[WorkerView], failed: set[str]) -> WorkerView:
    """A holder whose batch takes the request at once; when none can, the adapter's best-ranked worker
    that can (loaded there first, see router.coldstart); else the least busy holder, to queue there."""
    adapter = target.adapter
    if adapter is None:
        return power_of_two(views, rt.rng)
    return (pick_with_room(views, adapter, rt.rng) or await rt.cold.overflow(adapter, failed)
            or power_of_two(views, rt.rng))


async def _attempt(request: web.Request, rt: RouterRuntime, target: Target, view: WorkerView, body: bytes,
                   headers: str, started: float, last_chance: bool) -> web.StreamResponse:
    origin = view.origin
    request[WORKER] = view.id
    # aiohttp decodes header bytes as utf-8 with surrogateescape; encoding back the same way
    # forwards them byte for byte (latin-1 raised on any non-ASCII header byte: a 500).
    head = (f"POST {request.path_qs} HTTP/1.1\r\nHost: {origin.host_header}\r\n"
            f"Content-Length: {len(body)}\r\n{headers}{rt.auth_line(view.id)}\r\n"
            ).encode("utf-8", "surrogateescape")
    view.begin(target.adapter)
    try:
        try:
            upstream = await rt.upstream.request(origin.host, origin.port, origin.tls, head, body)
        except UpstreamTimeout as exc:
            _worker_failed(rt, view, exc)
            raise _timed_out(target) from None
        except UpstreamError as exc:
            _worker_failed(rt, view, exc)
            raise _Retry("connect") from None
        try:
            if not last_chance and _should_retry(rt, target, view, upstream.status):
                upstream.close()
                raise _Retry(ADAPTER_MISSING if upstream.status == 404 else "worker_5xx")
            if upstream.status < 500:
                view.failures = 0
            response = await _relay(request, rt, target, view, upstream)
        except AnswerCut:
            upstream.close()
            rt.metrics.requests.labels(request.path, rt.metrics.adapter(target.adapter), "502").inc()
            raise
        except BaseException:
            upstream.close()
            raise
        upstream.release()
    finally:
        view.end(target.adapter)
    label = rt.metrics.adapter(target.adapter)
    rt.metrics.requests.labels(request.path, label, str(response.status)).inc()
    rt.metrics.latency.labels(label).observe(time.monotonic() - started)
    return response


def _should_retry(rt: RouterRuntime, target: Target, view: WorkerView, status: int) -> bool:
    """A 404 for a held adapter means the worker lost it; a 5xx counts against the worker's health."""
    if status == 404 and target.adapter is not None:
        rt.fleet.remove_holding(view.id, target.adapter)
        return True
    if status >= 500:
        view.failures += 1
        control = rt.config.control
        workers = rt.fleet.workers.values()
        if should_eject(view.failures, threshold=control.down_after_failures, pool=len(workers),
                        down=sum(not v.healthy for v in workers), max_fraction=control.max_ejected_fraction):
            _mark_down(rt, view)
        return True
    return False


def _response_headers(rt: RouterRuntime, view: WorkerView, upstream: UpstreamResponse) -> dict[str, str]:
    headers = {k: v for k, v in upstream.headers if k.lower() not in HOP_BY_HOP}
    if rt.config.security.worker_header:
        headers[WORKER_HEADER] = view.id
    return headers


async def _relay(request: web.Request, rt: RouterRuntime, target: Target, view: WorkerView,
                 upstream: UpstreamResponse) -> web.StreamResponse:
    """Relay the answer. A non-streaming answer is read whole up to BUFFER_LIMIT, so a worker dying
    in it is retried elsewhere; past that, or for a stream, the client has the head already: a stream
    cut then ends with an SSE error event, any other answer cut then ends with the connection closed,
    so the client sees a truncated body fail rather than succeed."""
    headers = _response_headers(rt, view, upstream)
    streaming = upstream.content_type.startswith("text/event-stream")
    chunks = upstream.iter_chunks()
    first = b""
    try:
        if streaming:
            first = await anext(chunks, b"")
        else:
            buffered = await _read_up_to(chunks, BUFFER_LIMIT)
            if upstream.complete():
                if upstream.status == 200:
                    rt.metrics.count_usage(request.get(TENANT), buffered)
                return web.Response(status=upstream.status, body=buffered, headers=headers)
            first = buffered
    except UpstreamTimeout as exc:
        _worker_failed(rt, view, exc)
        raise _timed_out(target) from None
    except UpstreamError as exc:  # nothing sent yet (for a stream: no token): another holder may answer
        _worker_failed(rt, view, exc)
        raise _Retry("body_cut") from None
    response = web.StreamResponse(status=upstream.status, headers=headers)
    if not streaming and upstream.content_length is not None:
        response.content_length = upstream.content_length  # a cut stays visible as a short body
    await response.prepare(request)
    try:
        await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    except UpstreamError as exc:
        _worker_failed(rt, view, exc)
        if not streaming:
            assert request.transport is not None
            request.transport.close()
            raise AnswerCut from None
        await response.write(_sse_error("The worker stopped in the middle of the stream."))
    await response.write_eof()
    return response


async def _read_up_to(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The answer's first bytes: all of it when it ends within `limit`."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await anext(chunks, None)
        if chunk is None:
            break
        parts.append(chunk)
        size += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _timed_out(target: Target) -> GatewayTimeout:
    return GatewayTimeout(f"The worker serving model '{target.model}' did not answer in time; "
                          "the request was not sent again, since the worker may still be working on it.")


def _sse_error(message: str) -> bytes:
    error = UpstreamFailed(message)
    return b"data: " + error.body() + b"\n\n"


def _worker_failed(rt: RouterRuntime, view: WorkerView, exc: BaseException) -> None:
    log.warning("worker %s failed: %s", view.id, type(exc).__name__)
    _mark_down(rt, view)


def _mark_down(rt: RouterRuntime, view: WorkerView) -> None:
    """Passive health: stop sending to it; the health prober brings it back when /health answers."""
    view.healthy = False
    view.probe_at = time.monotonic() + rt.config.control.health_probe_s
    rt.metrics.worker_healthy.labels(view.id).set(0)
