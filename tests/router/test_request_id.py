"""Request ids and the JSON access log: a client's `x-request-id` (or the router's own) reaches the
worker and comes back; `--log-format json --access-log` writes one object per request with its id,
adapter, tenant, worker, status and latency, and never the prompt or the key."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from router.localfleet import base_url

PROMPT = "a prompt that must never reach the log"
KEY = "acme-key-not-for-logs"


def _post(url: str, model: str, request_id: str | None = None) -> tuple[int, dict[str, str], dict]:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": 2}).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/v1/completions", data=body, headers=headers),
                                    timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def test_request_id_reaches_the_worker_and_the_json_access_log(
        tmp_path: Path, start_workers: Callable, start_router: Callable, adapter_dirs: Callable,
        poll_until: Callable) -> None:
    root = adapter_dirs("rid-a").parent
    (tmp_path / "acme-keys").write_text(KEY + "\n")
    workers = start_workers(1)
    config = {
        "security": {"allowed_path_prefixes": [str(root)]},
        "tenants": {"acme": {"keys_file": str(tmp_path / "acme-keys"), "adapters": ["rid-*"]}},
        "adapters": [{"name": "rid-a", "source": str(root / "rid-a"), "base_model": "sim-base"}],
    }
    router = start_router(config, workers=[base_url(w) for w in workers], router_id="rid-router",
                          extra_args=("--log-format", "json", "--access-log"))

    status, headers, body = _post(router.url, "rid-a", "client-id-42")
    assert status == 200, body
    assert headers["x-request-id"] == "client-id-42"
    assert body["id"] == "cmpl-client-id-42", "the worker did not get the client's request id"

    status, headers, body = _post(router.url, "rid-a")
    assert status == 200
    generated = headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert body["id"] == f"cmpl-{generated}"

    status, headers, body = _post(router.url, "rid-a", "x" * 200)
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"]), "an oversized id is replaced"
    assert body["id"] == f"cmpl-{headers['x-request-id']}"

    status, headers, body = _post(router.url, "no-such-adapter", "err-id-7")
    assert status == 404 and body["error"]["type"]
    assert headers["x-request-id"] == "err-id-7", "errors carry the request id too"

    log_path = tmp_path / "rid-router.log"

    def access_lines() -> list[dict] | None:
        lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
        access = [line for line in lines if line["logger"] == "lora_router.access"]
        return access if len(access) == 4 else None

    access = poll_until(access_lines, 10, what="four access log lines")
    first = next(line for line in access if line["request_id"] == "client-id-42")
    assert first["adapter"] == "rid-a" and first["tenant"] == "acme" and first["status"] == 200
    assert first["worker"] and first["path"] == "/v1/completions" and first["latency_ms"] >= 0
    assert next(line for line in access if line["request_id"] == "err-id-7")["status"] == 404
    text = log_path.read_text()
    assert PROMPT not in text and KEY not in text
    assert all(line.startswith("{") for line in text.splitlines() if line.strip()), "every line is JSON"
