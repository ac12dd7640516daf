"""Reading a client's request body: bounded in size and in time.

A body that trickles in (slowloris) would otherwise hold a connection and a
handler task for as long as the client likes: aiohttp has no body read
timeout of its own.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from router.errors import PayloadTooLarge, RequestTimeout


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Request body of {request.content_length} bytes exceeds the limit of {limit}.")
    try:
        if request.content.is_eof():  # the whole body came with the head: no wait, no timer
            return await request.read()
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.") from None
    except TimeoutError:
        raise RequestTimeout(f"The request body was not received within {timeout_s:g} s.") from None
