"""Prefix-cache-aware picking through a real router process: a conversation's turns stay on the holder
that has its history cached, and the router counts those picks."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import aiohttp
import pytest

from router.localfleet import base_url

BASE = "sim-base"
SYSTEM = "You answer questions about invoices, refunds and payment plans, politely and briefly. " * 30


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _prefix_picks(router_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(router_url + "/metrics", timeout=10).read().decode()
    prefix = "lora_router_prefix_picks_total{"
    return {line.split('outcome="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


@pytest.mark.parametrize("index_blocks", [2048, 0])
async def test_a_conversation_stays_on_the_holder_that_has_its_history(
        index_blocks: int, start_workers: Callable, start_router: Callable, adapter_dirs: Callable,
        poll_until: Callable) -> None:
    """Three workers hold the adapter; eight turns of one conversation, each extending the last. With the
    index on, every turn lands on the first turn's worker; with it off (power of two), they spread."""
    root = adapter_dirs("support").parent
    workers = start_workers(3)
    config = {
        "security": {"allowed_path_prefixes": [str(root)]},
        "control": {"tick_s": 0.5, "reconcile_s": 1.0},
        "placement": {"defaults": {"min_replicas": 3}},
        "prefix": {"index_blocks": index_blocks},
        "adapters": [{"name": "support", "source": str(root / "support"), "base_model": BASE}],
    }
    router = start_router(config, workers=[base_url(w) for w in workers])
    poll_until(lambda: len(next(a["holders"] for a in _get_json(router.url + "/v1/loras")["data"]
                                if a["name"] == "support")) == 3, 30, what="three holders")
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    served: list[str] = []
    async with aiohttp.ClientSession() as http:
        for turn in range(8):
            messages.append({"role": "user", "content": f"Turn {turn}: where is invoice {turn}? " * 8})
            body = {"model": "support", "messages": messages, "max_tokens": 4}
            async with http.post(router.url + "/v1/chat/completions", json=body) as r:
                assert r.status == 200, await r.text()
                answer = (await r.json())["choices"][0]["message"]["content"]
                served.append(r.headers["x-lora-router-worker"])
            messages.append({"role": "assistant", "content": answer})
    picks = _prefix_picks(router.url)
    if index_blocks:
        assert len(set(served)) == 1, served
        assert picks == {"cached": 7.0, "uncached": 1.0}
    else:
        assert len(set(served)) > 1, served
        assert picks == {}


def test_odd_prompt_shapes_are_answered_as_the_worker_answers_them(
        start_workers: Callable, start_router: Callable, adapter_dirs: Callable, poll_until: Callable) -> None:
    """The router reads the prompt's text for its index, never judges it: a `messages` of a shape it cannot
    read goes to the worker, whose answer the client gets, as when it asked the worker itself."""
    root = adapter_dirs("support").parent
    (worker,) = start_workers(1)
    config = {"security": {"allowed_path_prefixes": [str(root)]}, "control": {"tick_s": 0.5, "reconcile_s": 1.0},
              "adapters": [{"name": "support", "source": str(root / "support"), "base_model": BASE}]}
    router = start_router(config, workers=[base_url(worker)])
    poll_until(lambda: any(a["holders"] for a in _get_json(router.url + "/v1/loras")["data"]), 30,
               what="a holder")
    long_text = SYSTEM * 2
    bodies = [
        {"model": "support", "max_tokens": 2, "messages": "hello"},
        {"model": "support", "max_tokens": 2, "messages": [{"role": "user", "content": 7}]},
        {"model": "support", "max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "text", "text": long_text}, {"type": "image_url"}]}]},
        {"model": "support", "max_tokens": 2, "messages": [{"role": "assistant", "content": None,
                                                           "tool_calls": []}, {"role": "user", "content": long_text}]},
    ]

    def ask(base: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    for body in bodies:
        direct, via = ask(base_url(worker), body), ask(router.url, body)
        assert via[0] == direct[0], (body, via, direct)
        if direct[0] != 200:
            assert via[1] == direct[1]
    assert _prefix_picks(router.url).get("uncached", 0) + _prefix_picks(router.url).get("cached", 0) == 2
