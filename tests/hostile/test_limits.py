"""Oversized and malformed requests at the protocol level: each a 4xx in OpenAI's shape, the router unharmed.

tests/router/test_bad_input.py covers one oversized body (declared length, one
route) and one oversized header; here every POST route, bodies with no declared
length, request lines, header names, header counts, smuggling-shaped framing and
JSON nested past the decoder's recursion limit.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hostile_helpers import ADMIN, BASE, assert_openai_error, exchange, send, split_response

MAX_BODY, MAX_HEADER = 4096, 2048
POST_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/load_lora_adapter",
               "/v1/unload_lora_adapter", "/v1/loras")
AUTH_LINE = f"Authorization: Bearer {ADMIN}\r\n".encode()


@pytest.fixture
def limited(hostile_router: Callable):
    return hostile_router(security={"max_body_bytes": MAX_BODY, "max_header_bytes": MAX_HEADER})


def _request(line: bytes, headers: bytes = b"", body: bytes = b"") -> bytes:
    return line + b"\r\nHost: router\r\n" + AUTH_LINE + headers + b"\r\n" + body


def _chunked(payload: bytes, chunk: int = 1000) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(payload[i:i + chunk]), payload[i:i + chunk])
             for i in range(0, len(payload), chunk)]
    return b"".join(parts) + b"0\r\n\r\n"


def _assert_still_serving(port: int) -> None:
    status, _, _ = send(port, "GET", "/health")
    assert status == 200
    body = b'{"model": "%s", "prompt": "x", "max_tokens": 1}' % BASE.encode()
    status, _, raw = send(port, "POST", "/v1/completions", body,
                          {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
    assert status == 200, raw


def test_bodies_over_the_limit_are_413_on_every_post_route(limited) -> None:
    big = b'{"model": "%s", "prompt": "%s"}' % (BASE.encode(), b"x" * (2 * MAX_BODY))
    for route in POST_ROUTES:
        declared = exchange(limited.port, _request(b"POST %s HTTP/1.1" % route.encode(),
                                                   b"Content-Length: %d\r\nConnection: close\r\n" % len(big), big))
        status, _, body = split_response(declared)
        assert_openai_error(status, body, 413)
        chunked = exchange(limited.port, _request(b"POST %s HTTP/1.1" % route.encode(),
                                                  b"Transfer-Encoding: chunked\r\nConnection: close\r\n",
                                                  _chunked(big)))
        status, _, body = split_response(chunked)
        assert_openai_error(status, body, 413)
    _assert_still_serving(limited.port)


BAD_HEADS = [
    ("long request line", _request(b"GET /v1/models?" + b"a" * (4 * MAX_HEADER) + b" HTTP/1.1")),
    ("long header name", _request(b"GET /v1/models HTTP/1.1", b"X-" + b"n" * (4 * MAX_HEADER) + b": v\r\n")),
    ("long header value", _request(b"GET /v1/models HTTP/1.1", b"X-Long: " + b"v" * (4 * MAX_HEADER) + b"\r\n")),
    ("many headers", _request(b"GET /v1/models HTTP/1.1", b"".join(b"X-H%d: v\r\n" % i for i in range(500)))),
    ("content-length and chunked", _request(b"POST /v1/completions HTTP/1.1",
                                            b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n")),
    ("two content-lengths", _request(b"POST /v1/completions HTTP/1.1",
                                     b"Content-Length: 2\r\nContent-Length: 3\r\n", b"{}")),
    ("negative content-length", _request(b"POST /v1/completions HTTP/1.1", b"Content-Length: -1\r\n")),
    ("bad chunk size", _request(b"POST /v1/completions HTTP/1.1", b"Transfer-Encoding: chunked\r\n",
                                b"zz\r\n{}\r\n0\r\n\r\n")),
    ("CR in a header value", _request(b"GET /v1/models HTTP/1.1", b"X-A: a\rInjected: 1\r\n")),
    ("space before colon", _request(b"GET /v1/models HTTP/1.1", b"X-A : a\r\n")),
    ("bytes in the path", _request(b"GET /v1/mod\x00els HTTP/1.1")),
    ("not HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64),
]


def test_malformed_or_oversized_heads_are_4xx_in_openai_shape(limited) -> None:
    for what, request_bytes in BAD_HEADS:
        status, _, body = split_response(exchange(limited.port, request_bytes))
        assert 400 <= status < 500, what
        assert_openai_error(status, body)
        _assert_still_serving(limited.port)


def test_json_nested_past_the_recursion_limit_is_400(hostile_router: Callable) -> None:
    env = hostile_router()
    depth = 200_000
    body = b'{"model": "%s", "x": %s%s, "prompt": "x"}' % (BASE.encode(), b"[" * depth, b"]" * depth)
    for route in POST_ROUTES:
        status, _, raw = send(env.port, "POST", route, body,
                              {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
        assert_openai_error(status, raw, 400)
    _assert_still_serving(env.port)
