"""HTTP/1.1 framing through a real router over real sockets: every client gets exactly its own answer.

Each request's prompt is as many words long as its tag, so the answer's
`usage.prompt_tokens` (and `model`) tell whose answer it is. The defects these
guard against: a worker's interim `100 Continue` taken as the final answer,
leaving the real one in a pooled connection for the next client (another
tenant's); a cut answer relayed as a clean end of message; a read timeout
that sent the same inference twice; a compressed body forwarded with its
header after being decoded.
"""

from __future__ import annotations

import gzip
import itertools
import json
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Callable

import pytest
from hostile_helpers import ACME, GLOBEX, assert_openai_error
from wire import Incomplete, Wire, assert_own, chunked, gzipped, head, request, tagged

TENANTS = ((ACME, "acme-chat"), (GLOBEX, "globex-chat"))


def _worker_counter(port: int, name: str) -> float:
    """A counter read off a simulated worker's /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def _status(port: int) -> dict[str, object]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/router/status",
                                 headers={"Authorization": "Bearer admin-key-0451"})
    return json.loads(urllib.request.urlopen(req, timeout=5).read())


def _plain_rounds(port: int, tags: itertools.count, rounds: int) -> None:
    """Keep-alive requests from both tenants on one connection, each checked for its own answer."""
    with Wire(port) as wire:
        for _ in range(rounds):
            for key, model in TENANTS:
                tag = next(tags)
                wire.send(request(key, tagged(model, tag)))
                assert_own(wire.final(), model, tag)


@pytest.mark.parametrize("pad", [0, 1_200_000], ids=["small", "over-1MiB"])
def test_expect_100_continue_is_answered_by_the_router_and_leaves_the_pool_clean(
        hostile_router: Callable, pad: int) -> None:
    env = hostile_router()
    tags = itertools.count(1)
    for round_ in range(6):
        key, model = TENANTS[round_ % 2]
        tag = next(tags)
        body = tagged(model, tag, pad=pad)
        with Wire(env.port) as wire:
            wire.send(head("/v1/completions", key, {"Expect": "100-continue"}, len(body)))
            assert wire.answer().status == 100  # the router asks for the body: its own interim answer
            wire.send(body)
            assert_own(wire.final(), model, tag)
    _plain_rounds(env.port, tags, 10)


@pytest.mark.parametrize(("key", "expect", "length", "status"), [
    ("not-a-key", "100-continue", 100, 401),
    (ACME, "100-continue", 5 << 20, 413),
    (ACME, "something-else", 100, 417),
], ids=["bad-key", "too-large", "unknown-expectation"])
def test_expect_is_refused_before_the_upload_when_the_request_cannot_succeed(
        hostile_router: Callable, key: str, expect: str, length: int, status: int) -> None:
    env = hostile_router()
    with Wire(env.port) as wire:
        wire.send(head("/v1/completions", key, {"Expect": expect}, length))
        answer = wire.answer()  # no 100 Continue first: the client is not asked for its body
        assert_openai_error(answer.status, answer.body, status)
        assert wire.at_eof()


def test_curl_with_a_large_body_gets_its_own_answer(hostile_router: Callable, tmp_path) -> None:
    """curl sends `Expect: 100-continue` by itself for bodies over 1 MiB."""
    curl = shutil.which("curl")
    assert curl, "curl is part of the test machine"
    env = hostile_router()
    tags = itertools.count(1)
    for key, model in TENANTS * 2:
        tag = next(tags)
        path = tmp_path / f"body-{tag}.json"
        path.write_bytes(tagged(model, tag, pad=1_500_000))
        out = subprocess.run([curl, "-sS", "--fail-with-body", "-H", f"Authorization: Bearer {key}",
                              "-H", "Content-Type: application/json", "--data-binary", f"@{path}",
                              f"http://127.0.0.1:{env.port}/v1/completions"],
                             capture_output=True, timeout=30, check=True).stdout
        parsed = json.loads(out)
        assert (parsed["model"], parsed["usage"]["prompt_tokens"]) == (model, tag)
    _plain_rounds(env.port, tags, 5)


def test_pipelined_requests_in_one_write_are_answered_in_order(hostile_router: Callable) -> None:
    env = hostile_router()
    with Wire(env.port) as wire:
        batch = [(key, model, tag) for tag, (key, model) in enumerate(TENANTS * 3, start=1)]
        wire.send(b"".join(request(key, tagged(model, tag)) for key, model, tag in batch))
        for _, model, tag in batch:
            assert_own(wire.final(), model, tag)


def test_chunked_request_bodies_are_read_whole(hostile_router: Callable) -> None:
    env = hostile_router()
    with Wire(env.port) as wire:
        for tag, (key, model) in enumerate(TENANTS * 2, start=1):
            for piece in chunked(key, tagged(model, tag, stream=tag % 2 == 0)):
                wire.send(piece)
            assert_own(wire.final(), model, tag)


@pytest.mark.parametrize("framing", [
    "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
    "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    "Content-Length: 4\r\nContent-Length: 40\r\n",
], ids=["cl-then-te", "te-then-cl", "two-lengths"])
def test_conflicting_framing_is_refused_and_the_connection_closed(hostile_router: Callable,
                                                                  framing: str) -> None:
    """Request smuggling: a proxy and a worker that disagree on where a body ends see different requests."""
    env = hostile_router()
    smuggled = request(ACME, tagged("acme-chat", 1))
    with Wire(env.port) as wire:
        wire.send(f"POST /v1/completions HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {ACME}\r\n{framing}\r\n"
                  .encode() + b"0\r\n\r\n" + smuggled)
        answer = wire.answer()
        assert_openai_error(answer.status, answer.body, 400)
        assert wire.at_eof()


def test_interim_1xx_answers_from_a_worker_are_skipped(hostile_router: Callable) -> None:
    env = hostile_router(worker_args=("--early-hints",))
    tags = itertools.count(1)
    _plain_rounds(env.port, tags, 10)
    with Wire(env.port) as wire:  # streams too
        for key, model in TENANTS * 3:
            tag = next(tags)
            wire.send(request(key, tagged(model, tag, stream=True)))
            assert_own(wire.final(), model, tag)


def test_a_cut_answer_is_retried_while_the_client_has_seen_nothing(hostile_router: Callable) -> None:
    """A worker that dies mid-body before the client saw a byte: the request is not lost, and the
    connection to that worker is not reused."""
    env = hostile_router(workers=1, worker_args=("--cut-rate", "1"))
    with Wire(env.port) as wire:
        wire.send(request(ACME, tagged("acme-chat", 3)))
        answer = wire.final()
    # One worker, every answer cut: after the retry there is nobody left, and the client is told so.
    assert answer.status in (502, 503)
    assert_openai_error(answer.status, answer.body)


def test_a_large_answer_cut_mid_body_is_a_visible_failure(hostile_router: Callable) -> None:
    """Past the buffer the client has the head already: the truncation must not look like a success."""
    env = hostile_router(workers=1, worker_args=("--cut-rate", "1", "--max-model-len", "500000"))
    body = json.dumps({"model": "acme-chat", "prompt": "w w w", "max_tokens": 400_000,
                       "ignore_eos": True}).encode()
    with Wire(env.port, timeout_s=60) as wire:
        wire.send(request(ACME, body))
        with pytest.raises(Incomplete):
            answer = wire.final()
            raise AssertionError(f"a cut answer arrived as complete: {answer.status}, {len(answer.body)} bytes")


def test_gzip_request_bodies_work_and_bad_ones_never_eject_a_worker(hostile_router: Callable) -> None:
    env = hostile_router(control={"down_after_failures": 2})
    tags = itertools.count(1)
    with Wire(env.port) as wire:
        for key, model in TENANTS * 5:
            tag = next(tags)
            wire.send(gzipped(key, tagged(model, tag)))
            assert_own(wire.final(), model, tag)
    for _ in range(6):
        with Wire(env.port) as wire:
            wire.send(request(ACME, b"this is not gzip", {"Content-Encoding": "gzip"}))
            answer = wire.final()
            assert_openai_error(answer.status, answer.body, 400)
    bomb = gzip.compress(b'{"model": "acme-chat", "prompt": "' + b" " * (64 << 20) + b'"}')
    with Wire(env.port) as wire:
        wire.send(head("/v1/completions", ACME, {"Content-Encoding": "gzip"}, len(bomb)) + bomb)
        answer = wire.final()
        assert_openai_error(answer.status, answer.body, 413)
    workers = _status(env.port)["workers"]
    assert all(w["healthy"] for w in workers), workers  # type: ignore[index, union-attr]
    _plain_rounds(env.port, tags, 5)


def test_a_client_that_leaves_mid_body_is_a_499_in_every_metric_and_no_traceback(
        hostile_router: Callable, poll_until: Callable) -> None:
    env = hostile_router()

    def scraped() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{env.port}/metrics", timeout=5).read().decode()

    with Wire(env.port) as wire:
        wire.send(head("/v1/completions", ACME, None, 100) + b'{"model": "acme-chat"')
        poll_until(lambda: "lora_router_inflight_requests 1.0" in scraped(), timeout_s=20,
                   what="the router to be reading the body")
    poll_until(lambda: 'status="499"' in scraped(), timeout_s=20, what="the abandoned request to be counted")
    text = scraped()
    counted = [line for line in text.splitlines() if line.startswith(("lora_router_requests_total{",
                                                                      "lora_router_tenant_requests_total{"))]
    assert any('tenant="acme"' in line and 'status="499"' in line for line in counted), counted
    assert not any('status="500"' in line for line in counted), counted
    log = env.router.proc.log_path.read_text()
    assert "Traceback" not in log, log[-2000:]


def test_a_read_timeout_never_sends_the_inference_twice(hostile_router: Callable) -> None:
    """The worker may still be generating: sending the request again (on another pooled connection or
    to another holder) would run it twice. The client gets a 504 instead."""
    env = hostile_router(worker_args=("--slow-s", "3"), timeouts={"read_s": 1.0})
    worker_port = int(_status(env.port)["workers"][0]["url"].rsplit(":", 1)[1])  # type: ignore[index]
    with Wire(env.port) as wire:  # pooled connections to the worker first (embeddings are not slow)
        for _ in range(2):
            warm = b'{"model": "acme-chat", "input": "warm up"}'
            wire.send(head("/v1/embeddings", ACME, None, len(warm)) + warm)
            assert wire.final().status == 200
    before = _worker_counter(worker_port, "lora_sim_requests_received_total")  # the registrar's warm-up
    with Wire(env.port) as wire:
        wire.send(request(ACME, tagged("acme-chat", 5)))
        answer = wire.final()
    assert_openai_error(answer.status, answer.body, 504)
    # A second send would have been written before the 504 was: it would be counted by now.
    assert _worker_counter(worker_port, "lora_sim_requests_received_total") == before + 1


def test_thousands_of_mixed_requests_from_two_tenants_each_get_their_own_answer(
        hostile_router: Callable) -> None:
    """Plain, Expect, chunked, pipelined, gzip and streamed requests at once, over workers that send
    interim answers: not one answer reaches the wrong client."""
    env = hostile_router(workers=2, worker_args=("--early-hints",))
    tags = itertools.count(1)
    lock = threading.Lock()
    done: list[int] = []
    errors: list[BaseException] = []

    def next_tag() -> int:
        with lock:
            return next(tags)

    def client(index: int) -> None:
        try:
            key, model = TENANTS[index % 2]
            with Wire(env.port) as wire:
                for round_ in range(48):
                    kind = (round_ + index) % 6
                    if kind == 5:  # a pipelined pair
                        pair = [next_tag(), next_tag()]
                        wire.send(b"".join(request(key, tagged(model, t)) for t in pair))
                        for t in pair:
                            assert_own(wire.final(), model, t)
                        done.extend(pair)
                        continue
                    tag = next_tag()
                    body = tagged(model, tag, stream=kind == 4)
                    if kind == 1:
                        wire.send(head("/v1/completions", key, {"Expect": "100-continue"}, len(body)))
                        assert wire.answer().status == 100
                        wire.send(body)
                    elif kind == 2:
                        for piece in chunked(key, body):
                            wire.send(piece)
                    elif kind == 3:
                        wire.send(gzipped(key, body))
                    else:
                        wire.send(request(key, body))
                    assert_own(wire.final(), model, tag)
                    done.append(tag)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors[:3]
    assert len(done) >= 2000 and len(set(done)) == len(done)
