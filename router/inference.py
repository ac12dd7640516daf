"""The inference routes' edge, around router.proxy: the method, the request id, the in-flight count, time
to first byte, errors in OpenAI's shape, the per-tenant count and the access log: every answer on these
routes, errors and refused `Expect`s included, carries an x-request-id and is counted and logged."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import time

from router.errors import AnswerCut, ClientClosedRequest, MethodNotAllowed, RouterError
from router.front import Answer, ClientRequest, Route
from router.logs import ACCESS
from router.proxy import REQUEST_ID_HEADER, Proxy

log = logging.getLogger(__name__)

USABLE_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
"""A client's x-request-id is kept when it is short visible ASCII; anything else is replaced by the router's."""
_ID_PREFIX = os.urandom(8).hex()
"""The router's ids: 32 hex digits, this process's random half then a count (unique, and cheaper than uuid4)."""
_id_count = itertools.count(1)


def inference_route(proxy: Proxy) -> Route:
    metrics = proxy.metrics

    def on_start(request: ClientRequest, answer: Answer) -> None:
        """As the head goes out (answers, errors and streams alike)."""
        answer.extra.append((REQUEST_ID_HEADER, request.request_id))
        metrics.first_byte(request.adapter, time.monotonic() - request.started)

    async def serve(request: ClientRequest, answer: Answer) -> None:
        request.started = started = time.monotonic()
        given = request.headers.get(REQUEST_ID_HEADER)
        usable = given and USABLE_REQUEST_ID.fullmatch(given)
        request.request_id = given if usable else f"{_ID_PREFIX}{next(_id_count):016x}"
        answer.on_start = on_start
        metrics.requests_in_flight += 1
        status = 500
        try:
            if request.method != "POST":
                raise MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}; use POST.",
                                       headers={"Allow": "POST"})
            await proxy.handle(request, answer)
            status = answer.status
        except RouterError as error:
            status = error.status
            metrics.answered(request.path, metrics.adapter(request.adapter), status).inc()
            if status >= 500:
                log.warning("%s %s -> %d: %s", request.method, request.path, status, error.message)
            if answer.started:
                answer.abort()
            else:
                answer.error(error)
        except AnswerCut:  # logged where it happened; the client sees the answer cut
            status = 502
            answer.abort()
        except asyncio.CancelledError:  # the client went away: counted, as nginx does, as 499
            status = ClientClosedRequest.status
            metrics.answered(request.path, metrics.adapter(request.adapter), status).inc()
            raise
        finally:
            metrics.requests_in_flight -= 1
            metrics.tenant_answered(metrics.tenant(request.tenant), status).inc()
            if ACCESS.isEnabledFor(logging.INFO):
                _access_line(request, status, started)

    return serve


def _access_line(request: ClientRequest, status: int, started: float) -> None:
    latency_ms = round((time.monotonic() - started) * 1000, 1)
    fields = {"request_id": request.request_id, "method": request.method, "path": request.path,
              "adapter": request.adapter, "tenant": request.tenant, "worker": request.worker,
              "status": status, "latency_ms": latency_ms}
    ACCESS.info("%s %s %d %.1fms adapter=%s tenant=%s worker=%s id=%s", request.method, request.path,
                status, latency_ms, request.adapter or "-", request.tenant or "-", request.worker or "-",
                request.request_id, extra=fields)
