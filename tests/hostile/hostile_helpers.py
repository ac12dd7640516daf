"""Helpers for the hostile-input tests: the keys, raw HTTP exchanges and the OpenAI error check."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any

ADMIN, ACME, GLOBEX = "admin-key-0451", "acme-key-1138", "globex-key-2187"
SECRETS = (ADMIN, ACME, GLOBEX)
BASE = "sim-base"
WORKER_HEADER = "x-lora-router-worker"
OPENAPI_PATH = Path(__file__).resolve().parents[2] / "router" / "openapi.json"
ERROR_KEYS = {"message", "type", "param", "code"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def send(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection: status, headers (lower-cased names), body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def post_json(port: int, path: str, payload: Any, key: str = ADMIN) -> tuple[int, dict[str, str], bytes]:
    return send(port, "POST", path, json.dumps(payload).encode(),
                {**bearer(key), "Content-Type": "application/json"})


def exchange(port: int, data: bytes, timeout_s: float = 10.0) -> bytes:
    """Send raw bytes, read until the router closes or `timeout_s` passes; the bytes it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
        return received


def split_response(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, raw header lines and body of one HTTP/1.x response read off the wire."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = [(n.strip().lower(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
    return status, headers, body


def assert_openai_error(status: int, body: bytes, expected: int | None = None) -> dict[str, Any]:
    """The body is exactly OpenAI's error shape with code = the HTTP status; returns the inner object."""
    if expected is not None:
        assert status == expected, (status, body[:300])
    parsed = json.loads(body)
    assert set(parsed) == {"error"}, parsed
    error = parsed["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert error["param"] is None or isinstance(error["param"], str), error
    assert error["code"] == status, error
    return error


def assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        blob = text.decode("latin-1") if isinstance(text, bytes) else text
        for key in SECRETS:
            assert key not in blob, "a key was echoed"


def catalog_names(port: int) -> set[str]:
    """The adapters in the catalog, as the admin sees them."""
    status, _, raw = send(port, "GET", "/v1/loras", headers=bearer(ADMIN))
    assert status == 200, raw
    return {a["name"] for a in json.loads(raw)["data"]}
