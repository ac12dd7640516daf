"""A lean HTTP/1.1 client for the hot path: keep-alive pools per worker, llhttp parsing, no copies.

aiohttp's client is general (cookies, redirects, compression, tracing) and
costs more CPU per proxied request than the rest of the router together; the
proxy needs none of that. This client writes one pre-built request, parses the
answer with httptools (llhttp, the parser Node.js uses) and hands body chunks
over as they arrive, with back-pressure. An idle pooled connection that the
worker closed is detected and replaced before the request counts as failed.

A pooled connection carries many clients' requests, so its framing is what
keeps one client's answer from reaching another. Interim answers (1xx) are
skipped, never taken for the answer; a connection goes back to the pool only
when its answer was read to the end, nothing more arrived after it, and the
parser is between messages; a byte that arrives on an idle connection closes it.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools
import msgspec

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class Origin(msgspec.Struct, frozen=True):
    """Where a worker listens, parsed once from its URL."""

    host: str
    port: int
    tls: bool
    host_header: str


@functools.lru_cache(maxsize=4096)
def origin_of(url: str) -> Origin:
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname or "127.0.0.1"
    return Origin(host=host, port=port, tls=tls, host_header=parts.netloc)


class UpstreamError(Exception):
    """The worker could not be reached or stopped answering; `before_response` says if it said anything,
    `cut` how the exchange broke (router.core.continuation.CUTS)."""

    cut = "closed"

    def __init__(self, message: str, *, before_response: bool) -> None:
        super().__init__(message)
        self.before_response = before_response


class UpstreamMalformed(UpstreamError):
    """The worker sent bytes that are not an HTTP answer."""

    cut = "malformed"


class UpstreamTimeout(UpstreamError):
    """The worker took too long: it may be working on the request, so it is never sent again."""

    cut = "timeout"


class UpstreamResponse:
    __slots__ = ("_conn", "content_length", "content_type", "headers", "next_chunk", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.next_chunk = conn.next_chunk
        """All of the body that arrived and was not read yet (at least one piece); None at its end."""
        self.status = conn.parser.get_status_code()
        self.headers = conn.headers
        self.content_type = conn.content_type
        self.content_length = conn.content_length

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.iter_chunks()]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def complete(self) -> bool:
        """The whole answer has been read."""
        return self._conn.complete and not self._conn.chunks

    def close(self) -> None:
        """Abandon the exchange (client gone, error): the connection cannot be reused."""
        self._conn.close()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            chunk = await conn.next_chunk()
            if chunk is None:
                return
            yield chunk

    def release(self) -> None:
        """Back to the pool if the exchange completed cleanly, else closed."""
        self._conn.finish()


class _Connection(asyncio.Protocol):
    def __init__(self, pool: _HostPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[tuple[str, str]] = []
        self.content_type = ""
        self.content_length: int | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.complete = False
        self.keep_alive = False
        self.headers_done = False
        self.interim = False
        """The head being parsed is a 1xx interim answer: skipped, the real one follows."""
        self.dirty = False
        """Bytes arrived that belong to no request of ours: the connection is never reused."""
        self.idle = False
        self.closed = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.waiting_since = 0.0
        self.read_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.idle:  # nothing was asked: whatever this is, the framing can no longer be trusted
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamMalformed(f"malformed response: {exc}", before_response=not self.headers_done))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.pool.discard(self)
        if not self.complete:
            self._fail(UpstreamError("connection closed by worker", before_response=not self.headers_done))

    # -- httptools callbacks ---------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:  # a second answer to one request
            self.dirty = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.complete:
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self.interim = True
            self.headers = []
            return
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == "content-type":
                self.content_type = value
            elif lowered == "content-length":
                self.content_length = int(value)
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.complete:
            return
        self.keep_alive = self.parser.should_keep_alive()
        self.complete = True
        self._wake()

    # -- used by the pool and the response --------------------------------------------
    def reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.headers = []
        self.content_type = ""
        self.content_length = None
        self.chunks.clear()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.headers_done = False
        self.interim = False
        self.error = None

    async def wait(self, timeout_s: float | None) -> None:
        """Until the worker sends something or fails; `timeout_s` of one wait is a read timeout. One timer
        per connection, moved on only when it fires: a timer per wait (per streamed event) costs more than
        relaying the event."""
        self.waiter = self.loop.create_future()
        self.waiting_since = self.loop.time()
        if timeout_s and self.read_timer is None:
            self.read_timer = self.loop.call_later(timeout_s, self._check_read_timeout)
        try:
            await self.waiter
        finally:
            self.waiter = None

    def _check_read_timeout(self) -> None:
        self.read_timer = None
        timeout_s = self.pool.read_timeout
        if self.waiter is None or not timeout_s:  # not waiting: the next wait sets the timer again
            return
        left = self.waiting_since + timeout_s - self.loop.time()
        if left > 0:
            self.read_timer = self.loop.call_later(left, self._check_read_timeout)
        else:
            self._timed_out()

    async def next_chunk(self) -> bytes | None:
        """All of the body that arrived and was not read yet (at least one piece): one write to the client
        for what the worker sent at once. None at the body's end."""
        while not self.chunks:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            await self.wait(self.pool.read_timeout)
        chunks = self.chunks
        if len(chunks) == 1:
            chunk = chunks.popleft()
        else:
            chunk = b"".join(chunks)
            chunks.clear()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < LOW_WATER and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def finish(self) -> None:
        if self.complete and self.keep_alive and not (self.closed or self.dirty or self.chunks or self.error):
            self.pool.put_idle(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None
        if self.transport is not None:
            self.transport.close()

    def _timed_out(self) -> None:
        self._fail(UpstreamTimeout("worker read timeout", before_response=not self.headers_done))
        self.close()

    def _fail(self, exc: UpstreamError) -> None:
        if self.error is None:
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _HostPool:
    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, connect_timeout: float,
                 read_timeout: float | None) -> None:
        self.host = host
        self.port = port
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.idle: list[_Connection] = []

    def discard(self, conn: _Connection) -> None:
        if conn in self.idle:
            self.idle.remove(conn)

    def put_idle(self, conn: _Connection) -> None:
        conn.reset()
        conn.idle = True
        self.idle.append(conn)

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.port == 0:  # the front's relay to the app's private socket (router.relay)
                    _, conn = await loop.create_unix_connection(lambda: _Connection(self, loop), self.host)
                else:
                    _, conn = await loop.create_connection(lambda: _Connection(self, loop), self.host, self.port,
                                                           ssl=self.tls)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to {self.host}:{self.port}: {type(exc).__name__}",
                                before_response=True) from None
        return conn


class UpstreamPool:
    """Keep-alive connections per worker (host, port); port 0: host is a unix socket's path."""

    def __init__(self, connect_timeout: float, read_timeout: float | None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._hosts: dict[tuple[str, int, bool], _HostPool] = {}
        self._tls = ssl.create_default_context()

    def configure(self, connect_timeout: float, read_timeout: float | None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        for pool in self._hosts.values():
            pool.connect_timeout = connect_timeout
            pool.read_timeout = read_timeout

    def _pool(self, host: str, port: int, tls: bool) -> _HostPool:
        pool = self._hosts.get((host, port, tls))
        if pool is None:
            pool = self._hosts[(host, port, tls)] = _HostPool(
                host, port, self._tls if tls else None, self.connect_timeout, self.read_timeout)
        return pool

    async def request(self, host: str, port: int, tls: bool, head: bytes, body: bytes) -> UpstreamResponse:
        """Send `head` (request line + headers, ending in a blank line) and `body`; return at the headers.

        A reused connection that the worker had closed (it says nothing and
        ends, or resets) is replaced by another: the worker never saw the
        request, so this is not a worker failure. A timeout is never retried:
        the worker may be working on the request.
        """
        pool = self._pool(host, port, tls)
        while pool.idle:
            conn = pool.idle.pop()
            if conn.closed:
                continue
            try:
                return await self._exchange(conn, head, body)
            except UpstreamError as exc:
                if not exc.before_response or isinstance(exc, UpstreamTimeout):
                    raise
        return await self._exchange(await pool.connect(), head, body)

    async def _exchange(self, conn: _Connection, head: bytes, body: bytes) -> UpstreamResponse:
        assert conn.transport is not None
        conn.idle = False
        try:
            conn.transport.write(head + body)
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(conn.pool.read_timeout)
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(conn)

    def close(self) -> None:
        for pool in self._hosts.values():
            for conn in pool.idle:
                conn.close()
            pool.idle.clear()
