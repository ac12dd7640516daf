"""Slowloris: clients that send their headers or body a byte at a time.

A read timeout must cut such a client off; until the router has one
(`timeouts.client_header_s` / `timeouts.client_body_s`, proposed in
docs/reliability.md), the two cut-off tests are expected failures, strictly:
they start passing, and must lose their marker, once the settings exist. That
many slow clients do not starve the others holds already.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from hostile_helpers import ADMIN, BASE, assert_openai_error, send, split_response

from router.config import TimeoutConfig

CUT_AFTER_S = 1.0
SLACK_S = 3.0
KNOBS = {"client_header_s", "client_body_s"}
HAS_READ_TIMEOUTS = KNOBS <= set(TimeoutConfig.__struct_fields__)
needs_read_timeouts = pytest.mark.xfail(
    not HAS_READ_TIMEOUTS, strict=True,
    reason="the router has no client read timeout: aiohttp closes a connection whose headers are incomplete "
           "only after keepalive_timeout (3630 s by default) and never times out a body read")
HEAD = f"POST /v1/completions HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer {ADMIN}\r\n".encode()


@pytest.fixture
def timed(hostile_router: Callable) -> Any:
    timeouts = {k: CUT_AFTER_S for k in KNOBS} if HAS_READ_TIMEOUTS else {}
    return hostile_router(timeouts=timeouts)


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


@needs_read_timeouts
def test_headers_sent_slowly_are_cut_off(timed) -> None:
    verdict, answer = _drip(timed.port, HEAD, b"X-Slow: " + b"a" * 1000, CUT_AFTER_S + SLACK_S)
    assert verdict == "cut"
    if answer:
        status, _, body = split_response(answer)
        assert_openai_error(status, body, 408)


@needs_read_timeouts
def test_a_body_sent_slowly_is_cut_off(timed) -> None:
    verdict, answer = _drip(timed.port, HEAD + b"Content-Length: 1000\r\n\r\n", b"{" * 1000,
                            CUT_AFTER_S + SLACK_S)
    assert verdict == "cut"
    if answer:
        status, _, body = split_response(answer)
        assert_openai_error(status, body, 408)


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
