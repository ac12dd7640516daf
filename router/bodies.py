"""Reading a client's request body: bounded in size and in time, decoded once.

A body that trickles in (slowloris) would otherwise hold a connection and a
handler task for as long as the client likes: aiohttp has no body read
timeout of its own. aiohttp decodes a `Content-Encoding` (gzip, deflate)
while reading, and the size limit applies to the decoded bytes, so a
compression bomb is a 413; a body that does not decode is the client's
error (400), never the worker's (aiohttp's parser then closes the connection).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from router.errors import BadRequest, ClientClosedRequest, PayloadTooLarge, RequestTimeout


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
    except ConnectionResetError:
        raise ClientClosedRequest("The client closed the connection before sending the whole body.") from None
    except RequestPayloadError:
        encoding = request.headers.get("Content-Encoding", "identity")[:32]
        raise BadRequest("The request body could not be read: it was cut short, or it does not decode "
                         f"as its Content-Encoding ({encoding}) says.") from None
    except TimeoutError:
        raise RequestTimeout(f"The request body was not received within {timeout_s:g} s.") from None
