"""`helm test`: the router answers /ready, lists models, and serves one completion end to end.

Runs in the router image (python only). The key is the first in KEYS_FILE (the release's admin keys,
or a tenant's), when the release has keys; it is never printed.
"""

import json
import os
import sys
import urllib.error
import urllib.request

BASE = os.environ["ROUTER_URL"].rstrip("/")
KEYS_FILE = os.environ.get("KEYS_FILE", "")
MODEL = os.environ.get("TEST_MODEL", "")


def key() -> str:
    if not KEYS_FILE or not os.path.exists(KEYS_FILE):
        return ""
    with open(KEYS_FILE) as lines:
        return next((s for s in (line.strip() for line in lines) if s and not s.startswith("#")), "")


def call(path: str, body: dict | None = None) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if KEY:
        headers["Authorization"] = f"Bearer {KEY}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(BASE + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def check(what: str, ok: bool, detail: object) -> None:
    print(f"{'ok' if ok else 'FAILED'}: {what}" + ("" if ok else f": {detail}"), flush=True)
    if not ok:
        sys.exit(1)


KEY = key()
status, body = call("/ready")
check("/ready", status == 200, f"{status} {body[:200]!r} (no worker registered or no placement yet?)")
status, body = call("/v1/models")
check("/v1/models", status == 200, f"{status} {body[:300]!r}")
models = [card["id"] for card in json.loads(body)["data"]]
check("a model is listed", bool(models), models)
model = MODEL or models[0]
status, body = call("/v1/completions", {"model": model, "prompt": "Hello", "max_tokens": 1})
check(f"one completion from {model}", status == 200, f"{status} {body[:300]!r}")
