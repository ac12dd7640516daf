"""A raw HTTP/1.1 client for framing tests: it writes exactly the bytes a test gives and reads answers
one by one off the same connection, 1xx interim answers included, so nothing is smoothed over."""

from __future__ import annotations

import gzip
import json
import socket
from typing import Any, Self

import msgspec


class Incomplete(Exception):
    """The connection ended before the answer's framing said it was complete."""


class Answer(msgspec.Struct):
    status: int
    headers: dict[str, str]
    body: bytes


class Wire:
    """One client connection to the router."""

    def __init__(self, port: int, timeout_s: float = 20.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.file = self.sock.makefile("rb")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def at_eof(self) -> bool:
        """True when the router closed the connection (after what was already read)."""
        try:
            return self.file.read(1) == b""
        except (ConnectionResetError, TimeoutError):
            return True

    def answer(self, head_only: bool = False) -> Answer:
        """The next answer on the connection, interim (1xx) answers included."""
        line = self.file.readline()
        if not line:
            raise Incomplete("connection closed before a status line")
        status = int(line.split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b"\n"):
            if not line:
                raise Incomplete("connection closed inside the head")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status < 200 or status in (204, 304) or head_only:
            return Answer(status, headers, b"")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return Answer(status, headers, self._chunked())
        if "content-length" in headers:
            return Answer(status, headers, self._exactly(int(headers["content-length"])))
        return Answer(status, headers, self.file.read())

    def final(self) -> Answer:
        """The next final answer, after any interim ones."""
        while (answer := self.answer()).status < 200:
            pass
        return answer

    def _exactly(self, n: int) -> bytes:
        data = self.file.read(n)
        if len(data) < n:
            raise Incomplete(f"body cut at {len(data)} of {n} bytes")
        return data

    def _chunked(self) -> bytes:
        parts = []
        while True:
            size_line = self.file.readline()
            if not size_line:
                raise Incomplete("connection closed inside a chunked body")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while self.file.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            parts.append(self._exactly(size))
            self._exactly(2)


def head(path: str, key: str, extra: dict[str, str] | None = None, length: int | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: router", f"Authorization: Bearer {key}",
             "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def tagged(model: str, tag: int, *, stream: bool = False, pad: int = 0) -> bytes:
    """A completion request whose prompt is `tag` words long: its answer's usage.prompt_tokens names it."""
    payload: dict[str, Any] = {"model": model, "prompt": " ".join(["w"] * tag), "max_tokens": 1}
    if stream:
        payload |= {"stream": True, "stream_options": {"include_usage": True}}
    if pad:
        payload["x_padding"] = "p" * pad
    return json.dumps(payload).encode()


def request(key: str, body: bytes, extra: dict[str, str] | None = None) -> bytes:
    return head("/v1/completions", key, extra, len(body)) + body


def chunked(key: str, body: bytes, pieces: int = 3) -> list[bytes]:
    """The writes of one request with a chunked body: the head, then each chunk, then the last chunk."""
    step = max(1, len(body) // pieces)
    writes = [head("/v1/completions", key, {"Transfer-Encoding": "chunked"})]
    writes += [b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step]) for i in range(0, len(body), step)]
    return [*writes, b"0\r\n\r\n"]


def gzipped(key: str, body: bytes) -> bytes:
    packed = gzip.compress(body)
    return head("/v1/completions", key, {"Content-Encoding": "gzip"}, len(packed)) + packed


def usage_of(answer: Answer) -> tuple[str, int]:
    """(model, prompt_tokens) of a completion answer, plain JSON or an SSE stream with usage."""
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[6:] for line in answer.body.split(b"\n") if line.startswith(b"data: ")]
        assert events[-1] == b"[DONE]", events[-3:]
        last = json.loads(events[-2])
        return last["model"], last["usage"]["prompt_tokens"]
    parsed = json.loads(answer.body)
    return parsed["model"], parsed["usage"]["prompt_tokens"]


def assert_own(answer: Answer, model: str, tag: int) -> None:
    assert answer.status == 200, (answer.status, answer.body[:300])
    assert usage_of(answer) == (model, tag), (model, tag, answer.body[:300])
