"""The connection layer under the app: errors aiohttp answers itself, and the request-head read timeout.

Some requests never reach a handler or middleware: malformed or oversized
heads, and exceptions no handler expected. aiohttp's RequestHandler answers
those itself in plain text; clients of an OpenAI-compatible API expect the
JSON error shape for every error, so the runner's server builds handlers that
render them the same way as every other error.

aiohttp also keeps a connection whose head is incomplete open until
`keepalive_timeout` (3,630 s by default): the handlers built here use
`timeouts.client_header_s`, read at each new connection, so a reload applies.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from router.errors import (
    AnswerCut,
    BadRequest,
    HttpStatusError,
    InternalError,
    PayloadTooLarge,
    RouterError,
)


class _OpenAIErrorHandler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        error: RouterError
        if isinstance(exc, AnswerCut):
            raise exc  # logged where it happened; the connection closes with the answer unfinished
        if status >= 500:
            self.log_exception("Error handling %s %s", request.method, request.path, exc_info=exc)
            if request.writer.output_size > 0:
                raise ConnectionError("the answer had started; the connection is closed instead")
            error = (InternalError("Internal server error.") if status == 500
                     else HttpStatusError(status, HTTPStatus(status).phrase))
        else:
            error = (PayloadTooLarge if status in (413, 431) else BadRequest)(
                "Malformed or oversized request line or headers.")
        response = web.Response(status=status, body=error.body(), content_type="application/json")
        response.force_close()
        return response


class _OpenAIErrorServer(web.Server):
    head_timeout_s: Callable[[], float]

    def __call__(self) -> RequestHandler:
        return _OpenAIErrorHandler(self, loop=self._loop, **{**self._kwargs,
                                                              "keepalive_timeout": self.head_timeout_s()})


def harden_connections(runner: web.BaseRunner, head_timeout_s: Callable[[], float]) -> None:
    """Call after `runner.setup()`; connections accepted from then on use the JSON error shape and
    close when no whole request head arrives within `head_timeout_s()` of opening or of the last answer."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    server.__class__ = _OpenAIErrorServer
    server.head_timeout_s = head_timeout_s  # type: ignore[attr-defined]
