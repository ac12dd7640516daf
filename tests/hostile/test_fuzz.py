"""Property-based fuzzing of every operation in router/openapi.json against a real router and worker.

Schemathesis turns each operation into a hypothesis strategy of schema-conforming
and schema-violating requests; hypothesis adds who is calling, real model names,
raw non-JSON bodies and stray headers and query parameters. Every answer is
checked: no 5xx from the router itself (a 5xx relayed from the worker carries
x-lora-router-worker), every error the router answers in OpenAI's shape, no
key echoed, answers to documented statuses conform to the document, and the
router is still healthy after each operation. Deterministic (derandomize).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from hostile_helpers import (
    ACME,
    ADMIN,
    BASE,
    GLOBEX,
    OPENAPI_PATH,
    WORKER_HEADER,
    assert_no_secret,
    assert_openai_error,
)
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MIN_REQUESTS = 10_000
PROXY = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
EXAMPLES = {**{f"POST {p}": 1600 for p in PROXY}, "POST /v1/load_lora_adapter": 900, "POST /v1/loras": 700,
            "GET /v1/loras/{name}": 600, "DELETE /v1/loras/{name}": 600, "POST /v1/unload_lora_adapter": 500,
            "GET /v1/models": 400, "GET /v1/loras": 300, "GET /v1/router/status": 300}
OTHER_EXAMPLES = 250
"""Requests per operation (10,400 in all); the proxy routes get most, as they parse the most."""

AUTH = {"admin": f"Bearer {ADMIN}", "acme": f"Bearer {ACME}", "globex": f"Bearer {GLOBEX}", "none": None,
        "wrong": "Bearer not-a-key", "basic": "Basic YWRtaW46YWRtaW4=", "lower": f"bearer {ADMIN}",
        "bare": ADMIN}
CALLERS = ["admin"] * 4 + sorted(AUTH) + ["noise"]
"""Mostly the admin, so most requests get past auth to the code behind it; "noise" is a random bearer value."""
MODELS = [None, BASE, "acme-chat", "globex-chat", f"{BASE}@acme-chat", f"{BASE}@globex-chat", "nope@acme-chat",
          "shared-chat"]
TOKEN = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=':()<>@,;\\"/[]?={}'),
                min_size=1, max_size=12)
LATIN1 = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)
EXTRA_HEADERS = st.dictionaries(TOKEN.filter(lambda n: n.lower() not in {"authorization", "content-length",
                                                                        "transfer-encoding", "host"}),
                                LATIN1.map(str.strip), max_size=3)
EXTRA_QUERY = st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=2)


def _replace(data: bytes) -> Callable[[bytes], bytes]:
    return lambda _body: data


def _splice(at_data: tuple[int, bytes]) -> Callable[[bytes], bytes]:
    at, data = at_data
    return lambda body: body[:at % (len(body) + 1)] + data + body[at % (len(body) + 1):]


BODY_MUTATION = st.one_of(st.none(), st.binary(max_size=200).map(_replace),
                          st.tuples(st.integers(0, 1 << 12), st.binary(min_size=1, max_size=3)).map(_splice))
"""Keep the generated JSON, replace it with raw bytes, or splice bytes into it (invalid UTF-8 and JSON)."""
LENGTHS, MAX_TOKENS = ("max_tokens", "max_completion_tokens"), 64
"""The simulated worker, unlike vLLM, does not refuse lengths beyond its context: it would generate them."""
CONFORMANCE = [status_code_conformance, content_type_conformance, response_schema_conformance]


@dataclass
class Tally:
    """Requests sent and statuses seen, per operation."""

    sent: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    relayed_5xx: int = 0

    def record(self, label: str, response: requests.Response) -> None:
        self.sent[label] += 1
        self.statuses[(label, response.status_code)] += 1
        self.relayed_5xx += response.status_code >= 500 and WORKER_HEADER in response.headers

    def summary(self, elapsed_s: float) -> str:
        lines = [f"{label:32} {n:6}  " + " ".join(f"{status}:{count}" for (op, status), count
                                                  in sorted(self.statuses.items()) if op == label)
                 for label, n in sorted(self.sent.items())]
        lines.append(f"{'total':32} {sum(self.sent.values()):6}  in {elapsed_s:.0f} s; "
                     f"5xx relayed from the worker: {self.relayed_5xx}")
        return "\n".join(lines)


def _strategy(op: Any) -> st.SearchStrategy[Any]:
    """Valid and invalid requests where the operation takes input; valid ones only where it takes none."""
    positive = op.as_strategy(generation_mode=GenerationMode.POSITIVE)
    if op.method == "get" and "{" not in op.path:
        return positive
    return st.one_of(positive, op.as_strategy(generation_mode=GenerationMode.NEGATIVE))


def _check(case: Any, response: requests.Response, label: str) -> None:
    relayed = WORKER_HEADER in response.headers
    assert response.status_code < 500 or relayed or case.path == "/ready", \
        f"{label}: the router answered {response.status_code}: {response.text[:300]}"
    if response.status_code >= 400 and not relayed:
        assert_openai_error(response.status_code, response.content)
    assert_no_secret(response.content, json.dumps(dict(response.headers)))
    if not relayed and response.status_code < 300:
        case.validate_response(response, checks=CONFORMANCE)


def _fuzz_operation(op: Any, base_url: str, session: requests.Session, tally: Tally, adapter_source: str) -> None:
    label = f"{op.method.upper()} {op.path}"
    proxy = op.path in PROXY
    sources = [None] * 7 + [adapter_source] if op.path in ("/v1/load_lora_adapter", "/v1/loras") else [None]

    @settings(max_examples=EXAMPLES.get(label, OTHER_EXAMPLES), derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(case=_strategy(op), auth=st.sampled_from(CALLERS), noise=LATIN1, model=st.sampled_from(MODELS),
           source=st.sampled_from(sources), mutate=BODY_MUTATION if op.method == "post" else st.none(),
           sticky=st.one_of(st.none(), LATIN1.map(str.strip)), extra_headers=EXTRA_HEADERS, extra_query=EXTRA_QUERY)
    def run(case: Any, auth: str, noise: str, model: str | None, source: str | None,
            mutate: Callable[[bytes], bytes] | None, sticky: str | None, extra_headers: dict[str, str],
            extra_query: dict[str, str]) -> None:
        if isinstance(case.body, dict):
            case.body = {k: min(v, MAX_TOKENS) if k in LENGTHS and type(v) is int else v for k, v in case.body.items()}
            if proxy and model is not None:
                case.body = {**case.body, "model": model}
            if source is not None:
                case.body = {**case.body, **({"source": {"uri": source}} if op.path == "/v1/loras"
                                             else {"lora_path": source})}
        kwargs = case.as_transport_kwargs(base_url=base_url)
        headers = {k: v for k, v in kwargs.pop("headers", {}).items() if k.lower() != "authorization"}
        headers.update(extra_headers)
        authorization = f"Bearer {noise}" if auth == "noise" else AUTH[auth]
        if authorization is not None:
            headers["Authorization"] = authorization
        if sticky is not None:
            headers["x-lora-router-user"] = sticky
        if mutate is not None:
            body = json.dumps(kwargs.pop("json")).encode() if "json" in kwargs else kwargs.get("data") or b""
            kwargs["data"] = mutate(body if isinstance(body, bytes) else str(body).encode())
        kwargs["params"] = {**(kwargs.get("params") or {}), **extra_query}
        response = session.request(headers=headers, timeout=30, **kwargs)
        tally.record(label, response)
        _check(case, response, label)

    run()


def _healthy(base_url: str) -> bool:
    try:
        return requests.get(f"{base_url}/health", timeout=5).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.timeout(600)  # about a minute alone; minutes on a busy 2-core machine
def test_fuzz_every_operation(hostile_router: Callable, poll_until: Callable,
                              record_property: Callable[[str, object], None]) -> None:
    env = hostile_router()
    base_url = env.router.url
    schema = schemathesis.openapi.from_path(str(OPENAPI_PATH))
    operations = [result.ok() for result in schema.get_all_operations()]
    tally = Tally()
    started = time.monotonic()
    with requests.Session() as session:
        for op in operations:
            _fuzz_operation(op, base_url, session, tally, str(env.adapter_root / "acme-chat"))
            assert env.router.proc.alive(), f"the router died while fuzzing {op.method.upper()} {op.path}"
            poll_until(lambda: _healthy(base_url), timeout_s=10, what="the router to answer /health")
    elapsed = time.monotonic() - started
    total = sum(tally.sent.values())
    assert requests.get(f"{base_url}/ready", timeout=5).status_code == 200
    after = requests.post(f"{base_url}/v1/completions", json={"model": "acme-chat", "prompt": "?", "max_tokens": 2},
                          headers={"Authorization": f"Bearer {ACME}"}, timeout=30)
    assert after.status_code == 200, after.text
    print(tally.summary(elapsed))
    record_property("fuzz_requests", total)
    assert len(tally.sent) == len(operations), "an operation was never fuzzed"
    assert total >= MIN_REQUESTS, f"only {total} requests generated"
