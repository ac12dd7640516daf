"""Errors no handler expected are answered in OpenAI's shape by the connection layer, over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from discovery.ports import free_port
from router.httpserver import harden_connections


async def _bug(_request: web.Request) -> web.Response:
    raise RuntimeError("a bug")


async def _bug_mid_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    await response.prepare(request)
    await response.write(b"data: 1\n\n")
    raise RuntimeError("after the first bytes")


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/bug", _bug)
    app.router.add_get("/bug-mid-stream", _bug_mid_stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    harden_connections(runner, lambda: 30.0)
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_an_unexpected_exception_is_a_500_in_openai_shape(server: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    async with aiohttp.ClientSession() as http, http.get(server + "/bug") as r:
        assert r.status == 500
        assert r.content_type == "application/json"
        assert await r.json() == {"error": {"message": "Internal server error.", "type": "InternalServerError",
                                            "param": None, "code": 500}}
        assert r.headers.get("Connection", "").lower() == "close"
    assert "RuntimeError" in caplog.text, "the traceback is logged once, at the edge"


async def test_an_exception_after_the_first_bytes_cuts_the_connection(server: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(server + "/bug-mid-stream") as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
