"""The router's HTTP side: the front (router.front) on the public listener, the aiohttp app behind it
on a private unix socket in a directory of its own (0700), both stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from router.front import Front
from router.httpserver import harden_connections
from router.inference import inference_route
from router.proxy import Proxy
from router.relay import AppRelay

UNIX_PATH_ROOM = 64
STOP_GRACE_S = 30.0
"""How long answers under way (streams included) get to finish once the router stops; the chart's
terminationGracePeriodSeconds (45) leaves room for it and the preStop sleep."""


@contextlib.asynccontextmanager
async def serving(app: web.Application, proxy: Proxy, listener: socket.socket) -> AsyncIterator[Front]:
    live = proxy.live
    security = live.config.security
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           max_field_size=security.max_header_bytes, max_line_size=security.max_header_bytes)
    await runner.setup()
    harden_connections(runner, lambda: live.config.timeouts.client_header_s)
    base = tempfile.gettempdir()
    if len(base) > UNIX_PATH_ROOM:  # a unix socket's path has 107 bytes at most
        base = "/tmp"
    private = Path(tempfile.mkdtemp(prefix="lora-router-", dir=base))
    path = str(private / "app.sock")
    relay = AppRelay(path, live)
    front = Front(live, inference=inference_route(proxy), other=relay)
    server: asyncio.Server | None = None
    try:
        await web.UnixSite(runner, path).start()
        server = await asyncio.get_running_loop().create_server(front, sock=listener)
        yield front
    finally:
        if server is not None:
            server.close()
        await front.stop(STOP_GRACE_S)
        relay.close()
        await runner.cleanup()
        shutil.rmtree(private, ignore_errors=True)
