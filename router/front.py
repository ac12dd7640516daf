"""The public HTTP/1.1 server: llhttp parsing per connection, the inference routes served in place,
every other route relayed to the aiohttp app on a private unix socket.

aiohttp's server (request objects, multidicts, its write path) cost about two
thirds of the router's CPU per proxied request. The inference routes are the
hot path and need little of it: a parsed head, a bounded body, and a writer
for one answer. So this module is the only thing a client talks to. It parses
with httptools (llhttp, the parser aiohttp and Node.js use), answers framing
errors itself in OpenAI's error shape, and hands each request to its route in
the order it arrived (pipelining), one at a time. The admin and status routes
keep aiohttp: the front re-sends them, framed by Content-Length and with the
body already read and decoded, over a private unix socket (router.server).

What a hostile client can do is bounded here, for every route alike: the
request line and each header line by `security.max_header_bytes`, the header
count by MAX_HEADERS, the body by `security.max_body_bytes` (after decoding, so
a compression bomb is a 413), a head by `timeouts.client_header_s` from the
connection's start or the last answer, a body by `timeouts.client_body_s`.
Conflicting framing (Content-Length with chunked, two lengths) is llhttp's
error and closes the connection. An answer that goes out before its request's
body was read whole also closes it: the rest of that body cannot be told
from the next request.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from urllib.parse import unquote

import httptools

from router.errors import (
    BadRequest,
    ClientClosedRequest,
    ExpectationFailed,
    HeadersTooLarge,
    HttpStatusError,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
    RouterError,
)
from router.live import LiveConfig

log = logging.getLogger(__name__)

INFERENCE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
"""Served by the request path (router.inference, router.proxy) without going through aiohttp; a method other
than POST is its 405."""
MAX_HEADERS = 128
"""As aiohttp's server: more is a 431."""
MAX_PIPELINED = 16
"""Requests parsed ahead of the one being answered; past this the connection is not read until one is answered."""
READ_AHEAD_BYTES = 64 * 1024
"""Body bytes read of a request waiting behind another before the connection is not read until its turn:
a pipelining client cannot make the router hold MAX_PIPELINED whole bodies."""
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
Pairs = Iterable[tuple[str, str]]


class Headers:
    """A request's headers as sent (order, case, repeats), with the first value of each name by lower-case name.

    Values are decoded as UTF-8 with surrogateescape (as aiohttp does), so a header forwarded to a
    worker is encoded back byte for byte."""

    __slots__ = ("_first", "items", "repeated")

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []
        self._first: dict[str, str] = {}
        self.repeated: set[str] | None = None
        """Lower-case names sent more than once (None: none)."""

    def add(self, name: str, value: str) -> None:
        self.items.append((name, value))
        lower = name.lower()
        if lower in self._first:
            self.repeated = {*(self.repeated or ()), lower}
        else:
            self._first[lower] = value

    def get(self, name: str, default: str = "") -> str:
        return self._first.get(name.lower(), default)

    def has(self, name: str) -> bool:
        return name.lower() in self._first


class ClientRequest:
    """One client request, from its head on; the body arrives behind it and is read by `read_body`.

    The request path records on it what the access log and metrics need once the answer is out."""

    __slots__ = ("_error", "_parts", "_waiter", "adapter", "ask", "complete", "content_length", "expect", "headers",
                 "http11", "keep_alive", "method", "path", "path_qs", "received", "refusal", "request_id", "started",
                 "tenant", "too_large", "worker")

    def __init__(self, method: str, path: str, path_qs: str, headers: Headers, *, http11: bool,
                 keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.path_qs = path_qs
        self.headers = headers
        self.http11 = http11
        self.keep_alive = keep_alive
        length = headers.get("content-length")
        self.content_length = int(length) if length and not headers.get("transfer-encoding") else None
        self.expect = (headers.get("expect") or None) if http11 else None
        """HTTP/1.0's is ignored, as HTTP says; the router answers it, it is never forwarded."""
        self.ask: Callable[[], None] | None = None
        """Sends the client its `100 Continue` (the connection's, set when the request is queued)."""
        self.refusal: RouterError | None = None
        """Set when the request cannot be served at all (a malformed head): answered, then the connection closes."""
        self.complete = False
        self.too_large = False
        self._parts: list[bytes] = []
        self.received = 0
        """Body bytes read so far (as sent, before decoding)."""
        self._error: RouterError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.started = 0.0
        self.request_id = ""
        self.adapter: str | None = None
        self.tenant: str | None = None
        self.worker: str | None = None

    # -- fed by the connection ------------------------------------------------------
    def feed(self, data: bytes, limit: int) -> None:
        if self.too_large:
            return
        self.received += len(data)
        if self.received > limit:  # answered (413) at once, not after the rest arrives; the connection then closes
            self.too_large = True
            self._parts.clear()
            self._wake()
        else:
            self._parts.append(data)

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: RouterError) -> None:
        if not self.complete and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- read by the route ------------------------------------------------------------
    async def read_body(self, limit: int, timeout_s: float) -> bytes:
        """The whole body, decoded per its Content-Encoding; bounded in size (413) and in time (408).

        A client that sent `Expect: 100-continue` is asked for its body here: when its route is about to
        read it (after the key was checked) and only when it fits; any other expectation is a 417. Only the
        request being answered reads its body, so the interim answer never lands inside another answer."""
        if self.expect is not None and self.expect.lower() != "100-continue":
            raise ExpectationFailed("Only 'Expect: 100-continue' is supported.")
        if self.content_length is not None and self.content_length > limit:
            raise PayloadTooLarge(f"Request body of {self.content_length} bytes exceeds the limit of {limit}.")
        if self.expect is not None and not self.complete and self.ask is not None:
            self.ask()
            self.ask = None
        if not (self.complete or self.too_large or self._error):  # else no wait, no timer
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._waiter
            except TimeoutError:
                raise RequestTimeout(f"The request body was not received within {timeout_s:g} s.") from None
            finally:
                self._waiter = None
        if self._error is not None:
            raise self._error
        if self.too_large:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        raw = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        encoding = self.headers.get("content-encoding")
        return _decoded(raw, encoding, limit) if encoding else raw


def _decoded(raw: bytes, encoding: str, limit: int) -> bytes:
    """The body as its Content-Encoding says, never more than `limit` bytes of it in memory."""
    codings = [c for c in (part.strip().lower() for part in encoding.split(",")) if c not in ("", "identity")]
    if not codings:
        return raw
    name = codings[0] if len(codings) == 1 else encoding
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(name)
    if wbits is None:
        raise HttpStatusError(415, f"Unsupported Content-Encoding '{encoding[:32]}': use gzip, deflate or identity.")
    for attempt in (wbits, -zlib.MAX_WBITS) if name == "deflate" else (wbits,):  # deflate: zlib-wrapped, or raw
        decoder = zlib.decompressobj(attempt)
        try:
            out = decoder.decompress(raw, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit or decoder.unconsumed_tail:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes once decoded.")
        if decoder.eof:
            return out
    raise BadRequest("The request body could not be read: it was cut short, or it does not decode "
                     f"as its Content-Encoding ({encoding[:32]}) says.")


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {phrase}\r\n".encode()
    return line


class _Clock:
    """The Date header, formatted once a second rather than per answer."""

    second = -1
    value = ""

    @classmethod
    def date(cls) -> str:
        now = int(time.time())
        if now != cls.second:
            cls.second, cls.value = now, email.utils.formatdate(now, usegmt=True)
        return cls.value


class Answer:
    """The writer of one request's answer: a whole answer at once, or a head then chunks.

    A body of unknown length goes out chunked to an HTTP/1.1 client and close-delimited to an
    HTTP/1.0 one. `on_start` runs as the head is built (the request id header, time to first byte)."""

    __slots__ = ("_chunked", "_conn", "_request", "close", "ended", "extra", "on_start", "started", "status")

    def __init__(self, conn: _Connection, request: ClientRequest) -> None:
        self._conn = conn
        self._request = request
        self.status = 0
        self.started = False
        self.ended = False
        self.close = not request.keep_alive
        self._chunked = False
        self.extra: list[tuple[str, str]] = []
        self.on_start: Callable[[ClientRequest, Answer], None] | None = None

    def _head(self, status: int, headers: Pairs, length: int | None, *, date: bool) -> bytes:
        if not self._request.complete:  # the rest of the body cannot be told from a next request: closed after
            self.close = True
        self.started = True
        self.status = status
        if self.on_start is not None:
            self.on_start(self._request, self)
        lines = [f"{name}: {value}\r\n" for name, value in headers]
        lines.extend(f"{name}: {value}\r\n" for name, value in self.extra)
        if date:
            lines.append(f"Date: {_Clock.date()}\r\n")
        if length is not None:
            lines.append(f"Content-Length: {length}\r\n")
        elif self._request.http11:
            self._chunked = True
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            self.close = True
        if self.close:
            lines.append("Connection: close\r\n")
        elif not self._request.http11:
            lines.append("Connection: keep-alive\r\n")
        lines.append("\r\n")
        return _status_line(status) + "".join(lines).encode("latin-1", "replace")

    def respond(self, status: int, headers: Pairs, body: bytes, *, date: bool = False) -> None:
        """The whole answer in one write; `date` for answers the router makes itself."""
        head = self._head(status, headers, len(body), date=date)
        self._conn.write(head + body if self._request.method != "HEAD" else head)
        self.ended = True

    def error(self, error: RouterError) -> None:
        if error.closes_connection:
            self.close = True
        self.respond(error.status, [("Content-Type", "application/json"), *error.headers.items()], error.body(),
                     date=True)

    def start(self, status: int, headers: Pairs, content_length: int | None) -> None:
        self._conn.write(self._head(status, headers, content_length, date=False))

    async def write(self, data: bytes) -> None:
        if not data or self._request.method == "HEAD":
            return
        conn = self._conn
        if self._chunked:
            conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            conn.write(data)
        if conn.write_paused:
            await conn.drain()

    def end(self) -> None:
        if self._chunked and self._request.method != "HEAD":
            self._conn.write(b"0\r\n\r\n")
        self.ended = True

    def abort(self) -> None:
        """The answer cannot be finished: the connection closes, so the client sees it cut, never complete."""
        self.close = True
        self._conn.close()


Route = Callable[[ClientRequest, Answer], Awaitable[None]]


class Front:
    """The protocol factory: `loop.create_server(front, sock=...)`.

    `inference` serves the inference routes, whatever the method (router.inference), `other` every other
    route (router.relay)."""

    def __init__(self, live: LiveConfig, *, inference: Route, other: Route) -> None:
        self.live = live
        self.inference = inference
        self.other = other
        self.connections: set[_Connection] = set()

    def __call__(self) -> _Connection:
        return _Connection(self)

    async def dispatch(self, request: ClientRequest, answer: Answer) -> None:
        if request.refusal is not None:
            answer.close = True
            answer.error(request.refusal)
            return
        await (self.inference if request.path in INFERENCE_ROUTES else self.other)(request, answer)

    async def stop(self, grace_s: float) -> None:
        """Idle connections close now; answers under way get `grace_s` to finish, then are cut."""
        for conn in list(self.connections):
            conn.stopping = True
            if not conn.queue:
                conn.close()
        busy = [conn.task for conn in self.connections if conn.queue and conn.task is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace_s)
        for conn in list(self.connections):
            conn.close()


class _HeadTooLarge(Exception):
    def __init__(self, error: RouterError) -> None:
        self.error = error


class _Connection(asyncio.Protocol):
    """One client connection: parses requests as bytes arrive, answers them in order from one task.

    The task lives as long as the connection and waits on a future between requests: a task per
    request costs more than the rest of the connection's bookkeeping."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: collections.deque[ClientRequest] = collections.deque()
        self.current: ClientRequest | None = None
        """The request whose body is being parsed."""
        self.task: asyncio.Task[None] | None = None
        self.wakeup: asyncio.Future[None] | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.idle_since = 0.0
        self.write_paused = False
        self.read_paused = False
        self.refused = False
        """Bytes came that are not a request: nothing more is read."""
        self.drain_waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.stopping = False
        """The router is stopping: the answer under way is the connection's last."""
        self._url: list[bytes] = []
        self._headers = Headers()
        self._head_bytes = 0
        self._limits = front.live.config.security
        self._body_of: ClientRequest | None = None
        """The request whose body the next message carries (after an Upgrade; see `_after_upgrade`)."""

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.front.connections.add(self)
        self.task = self.loop.create_task(self._serve())

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.front.connections.discard(self)
        if self.head_timer is not None:
            self.head_timer.cancel()
        for request in self.queue:
            request.fail(ClientClosedRequest("The client closed the connection before sending the whole body."))
        if self.task is not None:
            self.task.cancel()  # the client went away: a request under way is abandoned (counted as 499)
        self._wake_drain()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._after_upgrade(data[offset:])
        except _HeadTooLarge as too_large:
            self._refuse(too_large.error)
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc.__context__, _HeadTooLarge) else None
            if cause is not None:
                self._refuse(cause.error)
            elif "PRI" in str(exc):
                self._refuse(HttpStatusError(505, "HTTP/2 is not offered here: use HTTP/1.1."))
            else:
                self._refuse(BadRequest(f"Malformed request: {exc}"))

    def _after_upgrade(self, rest: bytes) -> None:
        """httptools stops at a request that asks to switch protocols (`Upgrade: h2c`, `websocket`), before
        its body. No switch is offered, so the request is served as HTTP/1.1, as HTTP allows: its body (when
        its head announced one) is read by a fresh parser told only how the body is framed."""
        self.parser = httptools.HttpRequestParser(self)
        request = self.queue[-1] if self.queue else None
        if request is not None and request.refusal is None and (
                request.content_length or request.headers.get("transfer-encoding")):
            request.complete = False
            self._body_of = request
            framing = (b"Content-Length: %d" % request.content_length if request.content_length is not None
                       else b"Transfer-Encoding: chunked")
            self.parser.feed_data(b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
        if rest and not self.closed:
            self.data_received(rest)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self._body_of is not None:
            return
        self._url = []
        self._headers = Headers()
        self._head_bytes = 0
        self._limits = self.front.live.config.security

    def on_url(self, url: bytes) -> None:
        if self._body_of is not None:
            return
        self._url.append(url)
        self._head_bytes += len(url)
        if self._head_bytes > self._limits.max_header_bytes:
            raise _HeadTooLarge(HttpStatusError(414, "The request line is too long."))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._body_of is not None:
            return
        headers = self._headers
        if len(name) + len(value) > self._limits.max_header_bytes or len(headers.items) >= MAX_HEADERS:
            raise _HeadTooLarge(HeadersTooLarge("Request header fields too large or too many."))
        headers.add(name.decode("latin-1"), value.decode("utf-8", "surrogateescape"))

    def on_headers_complete(self) -> None:
        if self._body_of is not None:
            self.current, self._body_of = self._body_of, None
            return
        parser = self.parser
        method = parser.get_method().decode("ascii")
        url = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        refusal: RouterError | None = None
        if not url.startswith(b"/"):  # absolute form (a proxy's): only the path is ours
            try:
                parsed = httptools.parse_url(url)
                url = (parsed.path or b"/") + (b"?" + parsed.query if parsed.query else b"")
            except httptools.HttpParserInvalidURLError:
                url = b"/"
                refusal = BadRequest("Malformed request target.")
        path_qs = url.decode("utf-8", "surrogateescape")
        path = path_qs.partition("?")[0]
        if "%" in path:
            path = unquote(path, errors="surrogateescape")
        version = parser.get_http_version()
        http11 = version == "1.1"
        headers = self._headers
        request = ClientRequest(method, path, path_qs, headers, http11=http11, keep_alive=parser.should_keep_alive())
        coding = headers.get("transfer-encoding")
        if version not in ("1.1", "1.0"):
            refusal = HttpStatusError(505, f"HTTP/{version} is not offered here: use HTTP/1.1.")
        elif headers.repeated and "host" in headers.repeated:
            refusal = BadRequest("Host may be sent once: which one counts is ambiguous.")
        elif method == "CONNECT":
            refusal = MethodNotAllowed("CONNECT is not supported: the router is not a forward proxy.")
        elif coding and coding.strip().lower() != "chunked":
            refusal = HttpStatusError(501, f"Transfer-Encoding '{coding[:32]}' is not supported: send the body "
                                           "chunked or with a Content-Length.")
        elif http11 and not headers.has("host"):
            refusal = BadRequest("An HTTP/1.1 request needs a Host header.")
        request.refusal = refusal
        request.ask = self._ask_for_body
        self.current = request
        self._enqueue(request)

    def on_body(self, body: bytes) -> None:
        request = self.current
        if request is not None:
            request.feed(body, self._limits.max_body_bytes)
            if request.received > READ_AHEAD_BYTES and request is not self.queue[0]:
                self._pause()

    def on_message_complete(self) -> None:
        if self.current is not None:
            self.current.finish()
            self.current = None

    # -- serving ---------------------------------------------------------------------------
    def _enqueue(self, request: ClientRequest) -> None:
        self.queue.append(request)
        if len(self.queue) >= MAX_PIPELINED:
            self._pause()
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def _refuse(self, error: RouterError) -> None:
        """The bytes are not a request we can serve: a request being read fails; a head that cannot be
        parsed gets its error after the answers before it; nothing more is read from this connection."""
        self.refused = True
        self._pause()
        if self.current is not None:
            self.current.fail(BadRequest(f"The request body could not be read: {error.message}"))
            self.current = None
            return
        refused = ClientRequest("GET", "", "", Headers(), http11=True, keep_alive=False)
        refused.refusal = error
        refused.complete = True
        self._enqueue(refused)

    async def _serve(self) -> None:
        while not self.closed:
            if not self.queue:
                self._idle()
                self.wakeup = self.loop.create_future()
                try:
                    await self.wakeup
                finally:
                    self.wakeup = None
                continue
            request = self.queue[0]
            answer = Answer(self, request)
            try:
                await self.front.dispatch(request, answer)
            except RouterError as error:  # the client's mistake, found by a route that does not render it
                if answer.started:
                    answer.abort()
                else:
                    answer.error(error)
            except Exception:  # a route's own failure: the client gets a 500 (or a cut), the router goes on
                log.exception("error serving %s %s", request.method, request.path[:100])
                if not answer.started:
                    answer.close = True
                    answer.error(HttpStatusError(500, "Internal server error."))
                answer.abort()
            self.queue.popleft()
            if answer.close or not answer.ended or not request.complete or self.closed or self.stopping:
                self.close()
                return
            self._resume()

    def _pause(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        """After an answer: read on, unless the bytes were refused, the queue is full, or the request being
        read is still waiting for its turn with more than READ_AHEAD_BYTES of its body in."""
        if not self.read_paused or self.refused or len(self.queue) >= MAX_PIPELINED or self.transport is None:
            return
        request = self.current
        if request is not None and request is not self.queue[0] and request.received > READ_AHEAD_BYTES:
            return
        self.read_paused = False
        self.transport.resume_reading()

    # -- writing and closing ----------------------------------------------------------------
    def _ask_for_body(self) -> None:
        self.write(CONTINUE)

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        if self.closed:
            raise ConnectionResetError("the client closed the connection")
        self.drain_waiter = self.loop.create_future()
        try:
            await self.drain_waiter
        finally:
            self.drain_waiter = None

    def _wake_drain(self) -> None:
        if self.drain_waiter is not None and not self.drain_waiter.done():
            self.drain_waiter.set_result(None)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _idle(self) -> None:
        """Waiting for a head from now on; one timer per connection, moved on only when it fires."""
        self.idle_since = self.loop.time()
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.front.live.config.timeouts.client_header_s,
                                                   self._head_timed_out)

    def _head_timed_out(self) -> None:
        """No whole head since the connection opened or its last answer: closed without an answer."""
        self.head_timer = None
        if self.queue:  # answering: `_idle` sets the timer again after the answer
            return
        left = self.idle_since + self.front.live.config.timeouts.client_header_s - self.loop.time()
        if left > 0:
            self.head_timer = self.loop.call_later(left, self._head_timed_out)
        else:
            self.close()
