"""Slowloris: clients that send their headers or body a byte at a time.

A read timeout cuts such a client off: `timeouts.client_header_s` closes a
connection whose head is still incomplete, `timeouts.client_body_s` answers a
body still incomplete with a 408 in OpenAI's shape and closes. Many slow
clients do not starve the others.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from hostile_helpers import ADMIN, BASE, assert_openai_error, send, split_response

CUT_AFTER_S = 1.0
SLACK_S = 3.0
HEAD = f"POST /v1/completions HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer {ADMIN}\r\n".encode()


@pytest.fixture
def timed(hostile_router: Callable) -> Any:
    return hostile_router(timeouts={"client_header_s": CUT_AFTER_S, "client_body_s": CUT_AFTER_S})


def _drip(port: int, head: bytes, drip: bytes, within_s: float) -> tuple[str, bytes]:
    """Send `head`, then `drip` a byte every 0.2 s; ('cut', answer) once the router closes, else ('open', b'')."""
    deadline = time.monotonic() + within_s
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        sock.settimeout(0.2)
        for byte in drip:
            try:
                sock.sendall(bytes([byte]))
                answer = sock.recv(65536)
            except TimeoutError:
                if time.monotonic() > deadline:
                    return "open", b""
                continue
            except (BrokenPipeError, ConnectionResetError):
                return "cut", b""
            return "cut", answer
    return "open", b""


def test_headers_sent_slowly_are_cut_off(timed) -> None:
    verdict, answer = _drip(timed.port, HEAD, b"X-Slow: " + b"a" * 1000, CUT_AFTER_S + SLACK_S)
    assert verdict == "cut"
    assert answer == b"", "a connection without a whole head is closed, not answered"


def test_a_body_sent_slowly_is_cut_off(timed) -> None:
    verdict, answer = _drip(timed.port, HEAD + b"Content-Length: 1000\r\n\r\n", b"{" * 1000,
                            CUT_AFTER_S + SLACK_S)
    assert verdict == "cut"
    status, headers, body = split_response(answer)
    assert_openai_error(status, body, 408)
    assert ("connection", "close") in headers


def test_many_slow_clients_do_not_starve_the_others(hostile_router: Callable) -> None:
    env = hostile_router()
    slow = [socket.create_connection(("127.0.0.1", env.port)) for _ in range(200)]
    try:
        for i, sock in enumerate(slow):
            sock.sendall(HEAD[: 10 + i % 40])
        body = b'{"model": "%s", "prompt": "x", "max_tokens": 1}' % BASE.encode()
        for _ in range(20):
            status, _, raw = send(env.port, "POST", "/v1/completions", body, {"Authorization": f"Bearer {ADMIN}"})
            assert status == 200, raw
    finally:
        for sock in slow:
            sock.close()
