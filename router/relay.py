"""Every route but the inference ones, re-sent by the front (router.front) to the aiohttp app that serves
them on a private unix socket.

The front has done the hostile part already (framing, limits, timeouts,
`Expect`, decoding): the app gets a clean request framed by Content-Length,
with the client's headers but the ones about the hop and the encoding. A HEAD
is asked as a GET and answered with the head alone, as aiohttp would.
"""

from __future__ import annotations

from router.front import Answer, ClientRequest
from router.live import LiveConfig
from router.proxy import HOP_BY_HOP
from router.upstream import UpstreamPool

HOP = (HOP_BY_HOP - {"authorization"}) | {"expect", "content-encoding", "proxy-connection"}
"""The request path's hop-by-hop set, but the app checks the client's key itself; the front has answered
`Expect` and decoded the body."""
NOT_RELAYED = HOP | {"server"}
"""Of the app's answer: the hop's headers, and aiohttp's `Server` (which names its version; the front's own
answers name none)."""


class AppRelay:
    def __init__(self, socket_path: str, live: LiveConfig) -> None:
        self.socket_path = socket_path
        self.live = live
        self.pool = UpstreamPool(connect_timeout=5.0, read_timeout=None)

    async def __call__(self, request: ClientRequest, answer: Answer) -> None:
        config = self.live.config
        if request.expect is not None:  # a key no route takes is refused before the client uploads anything
            self.live.auth.caller(request.headers.get("Authorization"))
        body = await request.read_body(config.security.max_body_bytes, config.timeouts.client_body_s)
        method = "GET" if request.method == "HEAD" else request.method
        lines = [f"{method} {request.path_qs} HTTP/1.1\r\nHost: router\r\nContent-Length: {len(body)}\r\n"]
        lines.extend(f"{k}: {v}\r\n" for k, v in request.headers.items if k.lower() not in HOP)
        lines.append("\r\n")
        head = "".join(lines).encode("utf-8", "surrogateescape")
        upstream = await self.pool.request(self.socket_path, 0, False, head, body)
        try:
            answer.start(upstream.status, [(k, v) for k, v in upstream.headers if k.lower() not in NOT_RELAYED],
                         upstream.content_length)
            while (chunk := await upstream.next_chunk()) is not None:
                await answer.write(chunk)
            answer.end()
        except BaseException:
            upstream.close()
            raise
        upstream.release()

    def close(self) -> None:
        self.pool.close()
