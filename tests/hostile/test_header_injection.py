"""Header injection through adapter and model names, and header bytes that are not UTF-8.

Names with CR/LF, Unicode look-alikes and separators, NUL and great length must
be refused by the admin API (400, `param` = lora_name) and unknown everywhere
else (404), and never reach a response header or start a line in the log. Raw
sockets, so the response head is read as the router wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote

from hostile_helpers import (
    ADMIN,
    BASE,
    assert_openai_error,
    catalog_names,
    exchange,
    split_response,
)

INJECTED = "X-Injected: 1"
NAMES = [
    f"evil\r\n{INJECTED}", f"evil\n{INJECTED}", f"evil\r{INJECTED}", f"evil\r\n\r\n{INJECTED}",
    f"evil\u2028{INJECTED}", f"evil\u0085{INJECTED}", "evil%0d%0aX-Injected:%201",
    "\u00e4dapter", "\u202eevil", "\u0430\u0441me-chat", "acme\u200b-chat", "\uff45\uff56\uff49\uff4c",
    "evil\x00", "evil\t", "x" * 129, "y" * 100_000, "../etc", "a/b", "evil;rm -rf", "",
]


def _json_request(method: str, path: str, payload: object) -> bytes:
    body = json.dumps(payload).encode()
    return (f"{method} {path} HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer {ADMIN}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def _answer(port: int, request: bytes, expected: int, name: str) -> dict:
    """The error for `request`; its head holds no injected header and no part of the name."""
    status, headers, body = split_response(exchange(port, request))
    error = assert_openai_error(status, body, expected)
    assert all(header != "x-injected" for header, _ in headers), headers
    marker = name.split("\r")[0].split("\n")[0] or None
    for _, value in headers:
        assert INJECTED not in value and (marker is None or len(marker) < 3 or marker not in value), headers
    return error


def test_names_are_refused_by_the_admin_api_and_echoed_in_no_header(hostile_router: Callable) -> None:
    env = hostile_router()
    source = str(env.adapter_root / "acme-chat")
    for name in NAMES:
        for path, payload in (("/v1/load_lora_adapter", {"lora_name": name, "lora_path": source}),
                              ("/v1/loras", {"lora_name": name, "source": {"uri": source}})):
            error = _answer(env.port, _json_request("POST", path, payload), 400, name)
            assert error["param"] == "lora_name", (name[:40], error)
    assert catalog_names(env.port) == {"acme-chat", "globex-chat"}


def test_names_are_unknown_on_every_other_route_and_echoed_in_no_header(hostile_router: Callable) -> None:
    env = hostile_router()
    for name in (n for n in NAMES if n and len(n) < 1000):
        _answer(env.port, _json_request("POST", "/v1/unload_lora_adapter", {"lora_name": name}), 404, name)
        for method in ("GET", "DELETE"):
            request = (f"{method} /v1/loras/{quote(name, safe='')} HTTP/1.1\r\nHost: router\r\n"
                       f"Authorization: Bearer {ADMIN}\r\nConnection: close\r\n\r\n").encode()
            _answer(env.port, request, 404, name)
        for model in (name, f"{BASE}@{name}"):
            request = _json_request("POST", "/v1/completions", {"model": model, "prompt": "x", "max_tokens": 1})
            _answer(env.port, request, 404, name)
    _answer(env.port, _json_request("POST", "/v1/unload_lora_adapter", {"lora_name": "z" * 2_000_000}), 404, "z")
    log = env.router.proc.log_path.read_text(errors="replace")
    assert not any(line.startswith(INJECTED) for line in log.splitlines())


def test_header_bytes_that_are_not_utf8_are_handled_not_crashed_on(hostile_router: Callable) -> None:
    """aiohttp keeps such bytes as lone surrogates: every header the router reads or forwards must cope."""
    env = hostile_router()
    body = b'{"model": "shared-chat", "prompt": "x", "max_tokens": 1}'
    head = b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nConnection: close\r\nContent-Length: %d\r\n" % len(body)
    cases = [
        (b"Authorization: Bearer \xe4\xff\xfe\r\n", 401),
        (b"Authorization: Bearer " + ADMIN.encode() + b"\r\nx-lora-router-user: \xe4\xff\r\n", 200),
        (b"Authorization: Bearer " + ADMIN.encode() + b"\r\nX-Forwarded: caf\xe9 \xe2\x82\xac\r\n", 200),
        (b"Authorization: Bearer " + ADMIN.encode() + b"\r\nX-Custom: \xc3\r\nConnection: close, X-Custom\r\n",
         200),
    ]
    for headers, expected in cases:
        status, _, answer = split_response(exchange(env.port, head + headers + b"\r\n" + body))
        assert status == expected, (headers, answer[:300])
        if expected >= 400:
            assert_openai_error(status, answer, expected)
