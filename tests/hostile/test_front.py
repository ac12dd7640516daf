"""The public server (router.front) on the legal but less common shapes of HTTP/1.1 a client may send,
and on stopping: each through a real router process over real sockets."""

from __future__ import annotations

import json
import signal
import urllib.request
import zlib
from collections.abc import Callable

from hostile_helpers import ACME, ADMIN, GLOBEX, assert_openai_error, send
from wire import Wire, assert_own, chunked, head, request, tagged

from router.front import MAX_PIPELINED


def test_more_pipelined_requests_than_are_read_ahead_are_all_answered_in_order(hostile_router: Callable) -> None:
    env = hostile_router()
    batch = [(key, model, tag) for tag, (key, model) in
             enumerate([(ACME, "acme-chat"), (GLOBEX, "globex-chat")] * (MAX_PIPELINED * 2), start=1)]
    with Wire(env.port) as wire:
        wire.send(b"".join(request(key, tagged(model, tag, stream=tag % 3 == 0, pad=200_000 if tag % 5 == 0 else 0))
                           for key, model, tag in batch))  # big bodies behind others are read in their turn
        for _, model, tag in batch:
            assert_own(wire.final(), model, tag)


def test_request_line_forms_and_encodings(hostile_router: Callable) -> None:
    env = hostile_router()
    body = tagged("acme-chat", 3)
    with Wire(env.port) as wire:
        # absolute form (as sent to a proxy) and a percent-encoded path name the same route
        wire.send(request(ACME, body).replace(b"POST /v1/completions", b"POST http://router/v1/completions", 1))
        assert_own(wire.final(), "acme-chat", 3)
        wire.send(request(ACME, body).replace(b"POST /v1/completions", b"POST /v1/%63ompletions", 1))
        assert_own(wire.final(), "acme-chat", 3)
        packed = zlib.compress(tagged("acme-chat", 4))
        wire.send(head("/v1/completions", ACME, {"Content-Encoding": "deflate"}, len(packed)) + packed)
        assert_own(wire.final(), "acme-chat", 4)
        wire.send(head("/v1/completions", ACME, {"Content-Encoding": "br"}, len(body)) + body)
        answer = wire.final()
        assert_openai_error(answer.status, answer.body, 415)
        wire.send(b"GET /v1/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer " + ACME.encode() + b"\r\n\r\n")
        answer = wire.final()
        assert_openai_error(answer.status, answer.body, 405)
        assert answer.headers["allow"] == "POST"
        wire.send(b"HEAD /health HTTP/1.1\r\nHost: r\r\n\r\n")
        assert wire.answer(head_only=True).status == 200
        wire.send(request(GLOBEX, tagged("globex-chat", 5)))  # nothing of HEAD's answer is left on the wire
        assert_own(wire.final(), "globex-chat", 5)


def test_http10_clients_get_close_delimited_streams_and_keep_alive_when_asked(hostile_router: Callable) -> None:
    env = hostile_router()
    body = tagged("acme-chat", 2)
    with Wire(env.port) as wire:
        keep = request(ACME, body, {"Connection": "keep-alive"}).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
        for _ in range(2):
            wire.send(keep)
            answer = wire.final()
            assert_own(answer, "acme-chat", 2)
            assert answer.headers["connection"] == "keep-alive"
    with Wire(env.port) as wire:
        wire.send(request(ACME, tagged("acme-chat", 6, stream=True)).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        answer = wire.final()  # no length, not chunked: the body ends where the connection does
        assert "transfer-encoding" not in answer.headers and "content-length" not in answer.headers
        assert_own(answer, "acme-chat", 6)


def test_admin_routes_take_expect_and_chunked_bodies_through_the_front(hostile_router: Callable) -> None:
    env = hostile_router()
    payload = json.dumps({"lora_name": "no-such-adapter"}).encode()
    with Wire(env.port) as wire:
        wire.send(head("/v1/unload_lora_adapter", ADMIN, {"Expect": "100-continue", "Transfer-Encoding": "chunked"}))
        assert wire.answer().status == 100
        wire.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
        answer = wire.final()
        assert_openai_error(answer.status, answer.body, 404)
        wire.send(b"GET /v1/models HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer " + ACME.encode() + b"\r\n\r\n")
        models = {m["id"] for m in json.loads(wire.final().body)["data"]}
        assert "acme-chat" in models and "globex-chat" not in models


def test_a_stopping_router_finishes_the_stream_under_way(hostile_router: Callable) -> None:
    env = hostile_router(worker_args=("--speed", "1"))
    body = json.dumps({"model": "acme-chat", "prompt": "w w", "max_tokens": 40, "ignore_eos": True,
                       "stream": True}).encode()
    with Wire(env.port, timeout_s=30) as wire:
        wire.send(request(ACME, body))
        first = wire.file.readline()
        assert first.startswith(b"HTTP/1.1 200"), first
        env.router.proc.signal(signal.SIGTERM)
        rest = wire.file.read()  # to the end: the answer, then the router closes the connection
    events = [line for line in rest.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]", rest[-300:]
    assert sum(b'"text"' in e for e in events) == 40
    process = env.router.proc.proc
    assert process is not None and process.wait(timeout=30) == 0


def test_a_body_over_the_limit_is_refused_as_it_arrives_not_when_it_ends(hostile_router: Callable) -> None:
    env = hostile_router(security={"max_body_bytes": 4096})
    with Wire(env.port) as wire:
        wire.send(head("/v1/completions", ACME, {"Transfer-Encoding": "chunked"}))
        wire.send(b"%x\r\n%s\r\n" % (5000, b"x" * 5000))  # and more to come: the client never ends it
        answer = wire.final()
        assert_openai_error(answer.status, answer.body, 413)
        assert wire.at_eof()


def _scraped(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def test_a_request_that_asks_to_switch_protocols_is_served_as_http11_with_its_body(
        hostile_router: Callable) -> None:
    """curl --http2 on a plain-http URL: `Upgrade: h2c` and the body right behind the head."""
    env = hostile_router()
    upgrade = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA"}
    body = tagged("acme-chat", 7)
    with Wire(env.port) as wire:
        wire.send(head("/v1/completions", ACME, upgrade, len(body)) + body)
        assert_own(wire.final(), "acme-chat", 7)
    with Wire(env.port) as wire:
        writes = chunked(ACME, tagged("acme-chat", 8))
        wire.send(writes[0].replace(b"\r\n\r\n", b"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 1))
        for piece in writes[1:]:
            wire.send(piece)
        assert_own(wire.final(), "acme-chat", 8)


def test_every_answer_on_an_inference_route_is_counted_and_carries_a_request_id(hostile_router: Callable) -> None:
    """Refusals included: a bad key behind `Expect`, a body over the limit, a wrong method."""
    env = hostile_router(security={"max_body_bytes": 4096})
    with Wire(env.port) as wire:
        wire.send(head("/v1/completions", "not-a-key", {"Expect": "100-continue"}, 100))
        answer = wire.answer()
        assert_openai_error(answer.status, answer.body, 401)
        assert answer.headers["x-request-id"] and answer.headers["connection"] == "close"
    with Wire(env.port) as wire:  # answered before its body arrived: the connection cannot go on, and says so
        wire.send(head("/v1/completions", ACME, None, 5000))
        answer = wire.answer()
        assert_openai_error(answer.status, answer.body, 413)
        assert answer.headers["x-request-id"] and answer.headers["connection"] == "close"
        assert wire.at_eof()
    with Wire(env.port) as wire:
        wire.send(b"GET /v1/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer " + ACME.encode() + b"\r\n\r\n")
        answer = wire.final()
        assert_openai_error(answer.status, answer.body, 405)
        assert answer.headers["x-request-id"]
    counted = [line for line in _scraped(env.port).splitlines()
               if line.startswith("lora_router_requests_total{") and 'route="/v1/completions"' in line]
    for status in ("401", "405", "413"):
        assert any(f'status="{status}"' in line for line in counted), (status, counted)


def test_what_the_router_does_not_offer_is_refused_clearly(hostile_router: Callable) -> None:
    env = hostile_router(security={"max_header_bytes": 2048})
    auth = b"Authorization: Bearer " + ACME.encode() + b"\r\n"
    refusals = [
        (b"POST /v1/completions HTTP/1.1\r\nHost: r\r\n" + auth + b"Transfer-Encoding: gzip, chunked\r\n\r\n"
         b"0\r\n\r\n", 501),
        (b"POST /v1/completions HTTP/1.1\r\n" + auth + b"Content-Length: 2\r\n\r\n{}", 400),  # no Host
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (b"GET /v1/models HTTP/1.1\r\nHost: r\r\nX-Long: " + b"v" * 4096 + b"\r\n\r\n", 431),
    ]
    for raw, status in refusals:
        with Wire(env.port) as wire:
            wire.send(raw)
            answer = wire.answer()
            assert_openai_error(answer.status, answer.body, status)
            assert wire.at_eof()
    with Wire(env.port) as wire:  # HTTP/1.0 has no 100 Continue: the expectation is ignored, the body awaited
        body = tagged("acme-chat", 2)
        ignored = head("/v1/completions", ACME, {"Expect": "100-continue"}, len(body))
        wire.send(ignored.replace(b"HTTP/1.1", b"HTTP/1.0"))
        wire.send(body)
        answer = wire.answer()
        assert_own(answer, "acme-chat", 2)
    status, headers, raw = send(env.port, "POST", "/v1/models", b"{}", {"Authorization": f"Bearer {ACME}"})
    assert_openai_error(status, raw, 405)
    assert "GET" in headers["allow"]


def test_a_client_that_leaves_mid_stream_is_a_499_for_its_adapter(hostile_router: Callable,
                                                                  poll_until: Callable) -> None:
    env = hostile_router(worker_args=("--speed", "1"))
    body = json.dumps({"model": "acme-chat", "prompt": "w", "max_tokens": 200, "ignore_eos": True,
                       "stream": True}).encode()
    with Wire(env.port) as wire:
        wire.send(request(ACME, body))
        assert wire.file.readline().startswith(b"HTTP/1.1 200")
    poll_until(lambda: any('status="499"' in line and 'adapter="acme-chat"' in line
                           for line in _scraped(env.port).splitlines()
                           if line.startswith("lora_router_requests_total{")),
               timeout_s=20, what="the abandoned stream counted as its adapter's 499")


def test_relayed_routes_refuse_a_bad_key_before_the_upload_and_every_answer_is_counted(
        hostile_router: Callable) -> None:
    env = hostile_router()
    payload = json.dumps({"name": "x", "source": "/nowhere"}).encode()
    with Wire(env.port) as wire:  # no 100 Continue for a key no route takes
        wire.send(head("/v1/loras", "not-a-key", {"Expect": "100-continue"}, len(payload)))
        answer = wire.answer()
        assert_openai_error(answer.status, answer.body, 401)
    for _ in range(3):
        status, headers, _ = send(env.port, "GET", "/v1/loras", None, {"Authorization": f"Bearer {ADMIN}"})
        assert status == 200 and "server" not in headers  # aiohttp's Server header (its version) is not relayed
    counted = [line for line in _scraped(env.port).splitlines() if line.startswith("lora_router_requests_total{")]
    assert any('route="/v1/loras"' in line and 'status="200"' in line and line.endswith(" 3.0")
               for line in counted), counted
    key = b"Authorization: Bearer " + ADMIN.encode() + b"\r\n"
    for raw, status in [(b"GET /v1/loras HTTP/2.0\r\nHost: r\r\n" + key + b"\r\n", 505),
                        (b"GET /v1/loras HTTP/1.1\r\nHost: r\r\n" + key + b"Host: s\r\n\r\n", 400)]:
        with Wire(env.port) as wire:
            wire.send(raw)
            answer = wire.answer()
            assert_openai_error(answer.status, answer.body, status)
