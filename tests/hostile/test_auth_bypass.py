"""Attempts to get past the keys, on every protected operation in router/openapi.json.

tests/router/test_bad_input.py checks a few of these on one route; here every
protected operation gets every attempt, each request is one that would change
the catalog or reach a worker if it got through, and the catalog is checked
unchanged at the end.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from hostile_helpers import (
    ACME,
    ADMIN,
    BASE,
    GLOBEX,
    OPENAPI_PATH,
    assert_no_secret,
    assert_openai_error,
    bearer,
    catalog_names,
    send,
)

NOT_A_KEY = [
    ("no header", {}),
    ("wrong key", bearer("not-the-key")),
    ("key minus its last character", bearer(ADMIN[:-1])),
    ("key plus a character", bearer(ADMIN + "x")),
    ("key upper-cased", bearer(ADMIN.upper())),
    ("empty bearer", {"Authorization": "Bearer"}),
    ("bearer and spaces", {"Authorization": "Bearer    "}),
    ("no scheme", {"Authorization": ADMIN}),
    ("scheme glued to the key", {"Authorization": f"Bearer{ADMIN}"}),
    ("basic with the key as password", {"Authorization": "Basic " + base64.b64encode(f"x:{ADMIN}".encode()).decode()}),
    ("basic with the key as user", {"Authorization": "Basic " + base64.b64encode(f"{ADMIN}:".encode()).decode()}),
    ("token scheme", {"Authorization": f"Token {ADMIN}"}),
    ("digest scheme", {"Authorization": f'Digest username="admin", response="{ADMIN}"'}),
    ("key and a second word", {"Authorization": f"Bearer {ADMIN} extra"}),
    ("two keys in one header", {"Authorization": f"Bearer not-the-key, Bearer {ADMIN}"}),
    ("x-api-key", {"X-API-Key": ADMIN}),
    ("api-key", {"api-key": ADMIN}),
    ("proxy-authorization", {"Proxy-Authorization": f"Bearer {ADMIN}"}),
    ("cookie", {"Cookie": f"Authorization=Bearer {ADMIN}; api_key={ADMIN}"}),
    ("non-ascii key", {"Authorization": "Bearer \u00e4dmin-key"}),
]
QUERY_KEYS = ["api_key", "key", "access_token", "token", "authorization"]


def _operations() -> list[tuple[str, str, list[str]]]:
    """(METHOD, path, tags) of every operation that needs a key."""
    doc = json.loads(OPENAPI_PATH.read_text())
    return [(method.upper(), path, op.get("tags", [])) for path, item in doc["paths"].items()
            for method, op in item.items() if isinstance(op, dict) and "responses" in op and op.get("security") != []]


def _request(method: str, path: str, adapter_root: Path) -> tuple[str, bytes | None]:
    """A request that would change the catalog, or reach a worker, if it got through."""
    source = str(adapter_root / "acme-chat")
    bodies = {
        "/v1/load_lora_adapter": {"lora_name": "bypassed-load", "lora_path": source},
        "/v1/unload_lora_adapter": {"lora_name": "acme-chat"},
        "/v1/loras": {"lora_name": "bypassed-create", "source": {"uri": source}},
    }
    body = bodies.get(path, {"model": "acme-chat", "prompt": "x", "input": "x", "max_tokens": 1,
                             "messages": [{"role": "user", "content": "x"}]})
    return path.replace("{name}", "acme-chat"), json.dumps(body).encode() if method == "POST" else None


def _attempt(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
    status, got_headers, raw = send(port, method, path, body, {"Content-Type": "application/json", **headers})
    assert_no_secret(raw, json.dumps(got_headers))
    return status, raw


def test_nothing_but_a_key_in_the_authorization_header_gets_in(hostile_router: Callable) -> None:
    env = hostile_router()
    operations = _operations()
    assert len(operations) >= 11
    for method, template, _ in operations:
        path, body = _request(method, template, env.adapter_root)
        for what, headers in NOT_A_KEY:
            status, raw = _attempt(env.port, method, path, body, headers)
            assert status == 401, (method, template, what, raw)
            assert_openai_error(status, raw, 401)
        for name in QUERY_KEYS:
            for value in (ADMIN, f"Bearer {ADMIN}"):
                status, raw = _attempt(env.port, method, f"{path}?{name}={quote(value)}", body, {})
                assert_openai_error(status, raw, 401)
    assert catalog_names(env.port) == {"acme-chat", "globex-chat"}


def test_tenant_keys_never_reach_admin_operations(hostile_router: Callable) -> None:
    env = hostile_router()
    for method, template, tags in _operations():
        if "admin" not in tags:
            continue
        path, body = _request(method, template, env.adapter_root)
        for key in (ACME, GLOBEX):
            status, raw = _attempt(env.port, method, path, body, bearer(key))
            assert_openai_error(status, raw, 403)
            status, raw = _attempt(env.port, method, f"{path}?api_key={ADMIN}", body, bearer(key))
            assert_openai_error(status, raw, 403)
    assert catalog_names(env.port) == {"acme-chat", "globex-chat"}


def test_duplicate_authorization_headers_never_raise_privilege(hostile_router: Callable) -> None:
    """The router reads the first header; a second one, whatever it holds, adds nothing."""
    env = hostile_router()
    for first, expected in (("Bearer not-the-key", 401), (f"Bearer {ACME}", 403), ("Basic eDp5", 401)):
        raw = _raw_with_two_authorizations(env.port, first, f"Bearer {ADMIN}")
        status = int(raw.split(b" ", 2)[1])
        assert status == expected, raw[:300]
        assert_openai_error(status, raw.partition(b"\r\n\r\n")[2], expected)


def _raw_with_two_authorizations(port: int, first: str, second: str) -> bytes:
    import socket

    request = (f"GET /v1/loras HTTP/1.1\r\nHost: router\r\nConnection: close\r\nAuthorization: {first}\r\n"
               f"Authorization: {second}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_another_tenants_adapter_is_unknown_in_every_spelling(hostile_router: Callable) -> None:
    """Names a tenant may not use answer exactly like names that do not exist, on every inference route."""
    env = hostile_router()
    for route in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        for model in ("globex-chat", f"{BASE}@globex-chat", "GLOBEX-CHAT", "globex-chat ", "globex-*", "*"):
            body = json.dumps({"model": model, "prompt": "x", "input": "x", "max_tokens": 1,
                               "messages": [{"role": "user", "content": "x"}]}).encode()
            status, raw = _attempt(env.port, "POST", route, body, bearer(ACME))
            error = assert_openai_error(status, raw, 404)
            assert error["message"].startswith(f"The model `{model}` does not exist."), error
