"""Hostile and broken requests: each a clear 4xx in OpenAI's error shape, never a 5xx, never a secret."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from router.config import key_digest
from router.localfleet import base_url

ADMIN, ACME, GLOBEX = "admin-key-123", "acme-key-456", "globex-key-789"


@pytest.fixture
def router(start_workers: Callable, start_router: Callable, adapter_dirs: Callable, tmp_path: Path):
    root = adapter_dirs("acme-chat").parent
    adapter_dirs("globex-chat")
    (tmp_path / "admin-keys").write_text(ADMIN + "\n")
    config = {
        "security": {"allowed_path_prefixes": [str(root)], "max_body_bytes": 4096, "max_header_bytes": 2048},
        "auth": {"admin_keys_file": str(tmp_path / "admin-keys")},
        "tenants": {"acme": {"keys_sha256": [key_digest(ACME)]},
                    "globex": {"keys_sha256": [key_digest(GLOBEX)]}},
        "adapters": [
            {"name": "acme-chat", "source": str(root / "acme-chat"), "base_model": "sim-base", "tenant": "acme"},
            {"name": "globex-chat", "source": str(root / "globex-chat"), "base_model": "sim-base",
             "tenant": "globex"},
        ],
        "control": {"tick_s": 0.5, "reconcile_s": 1.0},
    }
    worker = start_workers(1, extra_args=("--speed", "0.01"))[0]
    return start_router(config, workers=[base_url(worker)])


def _send(router, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    return resp.status, json.loads(raw) if raw else {}


def _assert_openai_error(status: int, body: dict, expected: int) -> None:
    assert status == expected, body
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == expected and err["message"]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


@pytest.mark.parametrize("body,param", [
    (b"{not json", None),
    (b"[]", None),
    (b"{}", "model"),
    (b'{"model": 7, "prompt": "x"}', "model"),
    (b'{"model": null}', "model"),
    (b'{"model": "acme-chat", "stream": "yes"}', "stream"),
])
def test_malformed_bodies_are_400(router, body: bytes, param: str | None) -> None:
    status, got = _send(router, "POST", "/v1/completions", body, _auth(ACME))
    _assert_openai_error(status, got, 400)
    assert got["error"]["param"] == param


def test_body_over_the_limit_is_413(router) -> None:
    body = json.dumps({"model": "acme-chat", "prompt": "x" * 10_000}).encode()
    status, got = _send(router, "POST", "/v1/completions", body, _auth(ACME))
    _assert_openai_error(status, got, 413)


def test_unknown_adapter_is_404_in_vllm_shape(router) -> None:
    status, got = _send(router, "POST", "/v1/completions", b'{"model": "nope", "prompt": "x"}', _auth(ACME))
    _assert_openai_error(status, got, 404)
    assert got["error"]["message"].startswith("The model `nope` does not exist.")
    assert got["error"]["type"] == "NotFoundError" and got["error"]["param"] == "model"


def test_another_tenants_adapter_behaves_as_absent(router) -> None:
    body = b'{"model": "globex-chat", "prompt": "x", "max_tokens": 2}'
    status, got = _send(router, "POST", "/v1/completions", body, _auth(ACME))
    _assert_openai_error(status, got, 404)
    status, got = _send(router, "POST", "/v1/completions", body, _auth(GLOBEX))
    assert status == 200, got
    status, listing = _send(router, "GET", "/v1/models", None, _auth(ACME))
    ids = {m["id"] for m in listing["data"]}
    assert "acme-chat" in ids and "globex-chat" not in ids


def test_models_never_show_a_server_path_to_a_tenant(router, tmp_path: Path) -> None:
    """vLLM's `root` is the adapter's path on the server: tenants see the adapter's name there, admins the path."""
    status, listing = _send(router, "GET", "/v1/models", None, _auth(ACME))
    assert status == 200 and str(tmp_path) not in json.dumps(listing)
    assert {m["id"]: m["root"] for m in listing["data"] if m["parent"]} == {"acme-chat": "acme-chat"}
    status, listing = _send(router, "GET", "/v1/models", None, _auth(ADMIN))
    assert status == 200
    roots = {m["id"]: m["root"] for m in listing["data"] if m["parent"]}
    assert roots == {name: str(tmp_path / "adapters" / name) for name in ("acme-chat", "globex-chat")}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"},
                                     {"Authorization": "Bearer "}])
def test_missing_or_wrong_keys_are_401(router, headers: dict[str, str]) -> None:
    status, got = _send(router, "POST", "/v1/completions", b'{"model": "acme-chat"}', headers)
    _assert_openai_error(status, got, 401)
    assert "wrong" not in json.dumps(got)


def test_tenant_key_on_admin_endpoints_is_403(router) -> None:
    status, got = _send(router, "GET", "/v1/loras", None, _auth(ACME))
    _assert_openai_error(status, got, 403)
    status, _ = _send(router, "GET", "/v1/loras", None, _auth(ADMIN))
    assert status == 200


def test_oversized_headers_are_rejected_with_4xx(router) -> None:
    headers = {**_auth(ACME), "X-Big": "y" * 8192}
    conn = http.client.HTTPConnection("127.0.0.1", router.port, timeout=10)
    conn.request("POST", "/v1/completions", body=b'{"model": "acme-chat"}', headers=headers)
    resp = conn.getresponse()
    assert 400 <= resp.status < 500
    _assert_openai_error(resp.status, json.loads(resp.read()), resp.status)


def test_no_secret_reaches_the_log(router) -> None:
    for key in (ADMIN, ACME, GLOBEX, "wrong-key-000"):
        _send(router, "POST", "/v1/completions", b'{"model": "acme-chat", "max_tokens": 1}', _auth(key))
    log = router.proc.log_path.read_text()
    for key in (ADMIN, ACME, GLOBEX, "wrong-key-000"):
        assert key not in log


@pytest.mark.parametrize("method,path,status", [("GET", "/v1/completions", 405), ("GET", "/v1/nothing", 404),
                                                ("POST", "/admin/../v1/loras", 404)])
def test_unknown_routes_and_methods_answer_in_openai_shape(router, method: str, path: str, status: int) -> None:
    got_status, got = _send(router, method, path, None, _auth(ACME))
    _assert_openai_error(got_status, got, status)
