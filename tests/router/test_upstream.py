"""The lean upstream client against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from router.upstream import UpstreamError, UpstreamPool, UpstreamTimeout, origin_of


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, int, dict[str, int]]]:
    seen = {"connections": 0}
    release = asyncio.Event()

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read(), content_type="application/json")

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(5):
            await resp.write(f"data: {i}\n\n".encode())
        await resp.write_eof()
        return resp

    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 0\n\n")
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def slow(request: web.Request) -> web.Response:
        seen["slow"] = seen.get("slow", 0) + 1
        await release.wait()
        return web.Response(text="late")

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/stream", stream)
    app.router.add_post("/cut", cut)
    app.router.add_post("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield "127.0.0.1", port, seen
    release.set()
    await runner.cleanup()


def _head(path: str, port: int, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
            "Content-Type: application/json\r\n\r\n").encode()


async def test_keep_alive_reuses_one_connection(server) -> None:
    host, port, _ = server
    pool = UpstreamPool(2.0, 5.0)
    for i in range(5):
        body = b'{"i": %d}' % i
        resp = await pool.request(host, port, False, _head("/echo", port, body), body)
        assert resp.status == 200 and await resp.read() == body
        resp.release()
    assert len(pool._hosts[(host, port, False)].idle) == 1
    pool.close()


async def test_streams_arrive_chunk_by_chunk(server) -> None:
    host, port, _ = server
    pool = UpstreamPool(2.0, 5.0)
    resp = await pool.request(host, port, False, _head("/stream", port, b"{}"), b"{}")
    assert resp.content_type.startswith("text/event-stream")
    chunks = [c async for c in resp.iter_chunks()]
    assert b"".join(chunks) == b"".join(f"data: {i}\n\n".encode() for i in range(5))
    resp.release()
    pool.close()


async def test_a_cut_stream_raises_after_the_first_bytes(server) -> None:
    host, port, _ = server
    pool = UpstreamPool(2.0, 5.0)
    resp = await pool.request(host, port, False, _head("/cut", port, b"{}"), b"{}")
    got = []
    with pytest.raises(UpstreamError) as info:
        async for chunk in resp.iter_chunks():
            got.append(chunk)
    assert got and not info.value.before_response
    pool.close()


async def test_connect_failure_is_before_response() -> None:
    from discovery.ports import free_port

    port = free_port()
    pool = UpstreamPool(1.0, 1.0)
    with pytest.raises(UpstreamError) as info:
        await pool.request("127.0.0.1", port, False, _head("/echo", port, b"{}"), b"{}")
    assert info.value.before_response


async def test_read_timeout(server) -> None:
    host, port, _ = server
    pool = UpstreamPool(1.0, 0.2)
    with pytest.raises(UpstreamTimeout):
        await pool.request(host, port, False, _head("/slow", port, b"{}"), b"{}")


async def test_an_idle_connection_closed_by_the_worker_is_replaced(server) -> None:
    host, port, _ = server
    pool = UpstreamPool(2.0, 5.0)
    resp = await pool.request(host, port, False, _head("/echo", port, b"{}"), b"{}")
    await resp.read()
    resp.release()
    idle = pool._hosts[(host, port, False)].idle[0]
    assert idle.transport is not None
    # The connection ends (EOF) with no turn of the event loop before the next request: the pool
    # hands it out as if alive, and the request must be sent again on a fresh one.
    idle.transport.get_extra_info("socket").shutdown(0)
    resp = await pool.request(host, port, False, _head("/echo", port, b"[1]"), b"[1]")
    assert await resp.read() == b"[1]"
    assert idle.closed
    pool.close()


async def test_a_timeout_is_never_sent_again(server) -> None:
    """The worker may be working on it: a second send would run the inference twice."""
    host, port, seen = server
    pool = UpstreamPool(1.0, 5.0)
    for path in ("/echo", "/echo"):  # two pooled connections the retry could have used
        first = await pool.request(host, port, False, _head(path, port, b"{}"), b"{}")
        second = await pool.request(host, port, False, _head(path, port, b"{}"), b"{}")
        for resp in (first, second):
            await resp.read()
            resp.release()
    pool.configure(1.0, 0.2)
    with pytest.raises(UpstreamTimeout):
        await pool.request(host, port, False, _head("/slow", port, b"{}"), b"{}")
    assert seen["slow"] == 1
    pool.close()


def test_origin_of_parses_worker_urls() -> None:
    o = origin_of("https://gpu-1.example:8443")
    assert (o.host, o.port, o.tls, o.host_header) == ("gpu-1.example", 8443, True, "gpu-1.example:8443")
    assert origin_of("http://10.0.0.1").port == 80
