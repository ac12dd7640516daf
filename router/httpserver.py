"""aiohttp's low-level protocol errors (oversized or malformed headers), rendered as OpenAI errors.

Such requests never reach a handler or middleware: aiohttp's RequestHandler
answers them itself in plain text. Clients of an OpenAI-compatible API expect
the JSON error shape for every 4xx, so the runner's server builds handlers
that render those answers the same way as every other error.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from router.errors import BadRequest, PayloadTooLarge, RouterError


class _OpenAIErrorHandler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        error: RouterError = (PayloadTooLarge if status in (413, 431) else BadRequest)(
            "Malformed or oversized request line or headers.")
        response = web.Response(status=status, body=error.body(), content_type="application/json")
        response.force_close()
        return response


class _OpenAIErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _OpenAIErrorHandler(self, loop=self._loop, **self._kwargs)


def render_protocol_errors_as_openai(runner: web.BaseRunner) -> None:
    """Call after `runner.setup()`; connections accepted from then on use the JSON error shape."""
    server = runner.server
    assert server is not None, "runner.setup() first"
    server.__class__ = _OpenAIErrorServer
