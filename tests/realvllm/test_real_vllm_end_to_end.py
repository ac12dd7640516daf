"""The router in front of real vLLM: real etcd, two real vLLM workers (API key set) each with a
registrar, one router.

Adapters are added and deleted only through the router's admin API; every
check of where an adapter lives asks the workers themselves (/v1/models).
Greedy output (temperature 0, ignore_eos) is the fingerprint of an adapter:
it differs per adapter and is the same on every holder.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from control.control_helpers import until
from hostile.wire import Wire, head
from openai_calls import (
    GREEDY_TOKENS,
    Reply,
    bearer,
    call,
    chat_deltas,
    greedy,
    greedy_text,
    listed,
)
from vllm_backend import TinyModel

from discovery.embedded import EmbeddedEtcd
from router.localfleet import base_url
from router.procs import ManagedProcess, python_cli
from router.proxy import WORKER_HEADER

pytestmark = [pytest.mark.real_vllm, pytest.mark.timeout(400)]

WORKER_KEY = "real-worker-secret-5c1d9e"
AUTH = bearer(WORKER_KEY)
CONTROL = {"tick_s": 0.5, "reconcile_s": 1.0, "lease_ttl_s": 3, "health_probe_s": 0.5}
SETTLE_S = 90.0
MIGRATED_TOKENS = 160
"""Long enough that the stream is still running when its worker is killed after three chunks."""


@dataclass
class RealFleet:
    router: Any
    """tests/conftest.py start_router's LocalRouter."""
    workers: list[ManagedProcess]
    registrars: list[ManagedProcess]
    adapters_root: Path

    def router_status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.router.url}/v1/router/status", timeout=10) as resp:
            return dict(json.loads(resp.read()))

    def known_workers(self) -> set[str]:
        """URLs of the healthy workers the router knows (from etcd, via the registrars)."""
        return {w["url"] for w in self.router_status()["workers"] if w["healthy"]}

    async def direct_text(self, name: str, prompt: str) -> str:
        """Greedy output of `name` asked straight from a worker that holds it."""
        async def from_a_holder() -> str | None:
            for url in await self.holders(name):
                reply = await greedy(url, name, prompt, AUTH)
                if reply.status == 200:
                    return str(reply.json()["choices"][0]["text"])
            return None
        return await until(from_a_holder, SETTLE_S, f"a direct answer for {name}")

    def logs(self) -> list[Path]:
        procs = [self.router.proc, *self.workers, *self.registrars]
        return [p.log_path for p in procs if p.log_path is not None]

    @property
    def urls(self) -> list[str]:
        return [base_url(w) for w in self.workers]

    async def holders(self, name: str) -> list[str]:
        """Worker URLs whose /v1/models lists `name` (the only source of truth for residency)."""
        found = []
        for url in self.urls:
            reply = await call("GET", f"{url}/v1/models", headers=AUTH)
            if reply.status == 200 and name in {c["id"] for c in reply.json()["data"]}:
                found.append(url)
        return found


@pytest.fixture
def real_fleet(start_vllm_workers: Callable[..., list[ManagedProcess]],
               start_router: Callable[..., Any], etcd: EmbeddedEtcd,
               poll_until: Callable[..., Any], tmp_path: Path) -> Iterator[Callable[..., RealFleet]]:
    """Two real vLLM workers, each announced in etcd by its own registrar, and one router."""
    registrars: list[ManagedProcess] = []

    def make(placement: Mapping[str, Any] | None = None) -> RealFleet:
        root = tmp_path / "adapters"
        root.mkdir()
        key_file = tmp_path / "worker.key"
        key_file.write_text(WORKER_KEY + "\n")
        workers = start_vllm_workers(2, api_key=WORKER_KEY)
        for worker in workers:
            argv = python_cli("router", "register", "--etcd", etcd.endpoint,
                              "--worker-url", base_url(worker), "--api-key-file", str(key_file),
                              "--max-lora-rank", "8", "--ttl", "3", "--health-interval", "0.5",
                              "--health-failures", "1")
            log = tmp_path / f"registrar-{len(registrars)}.log"
            registrars.append(ManagedProcess(argv, log_path=log).start())
        config: dict[str, Any] = {"security": {"allowed_path_prefixes": [str(root)]},
                                  "control": CONTROL, "worker_api_key_file": str(key_file)}
        if placement:
            config["placement"] = placement
        fleet = RealFleet(start_router(config), workers, registrars, root)
        # Placement made while only one worker is known moves adapters when the other
        # arrives; wait for both so that the tests see a settled placement.
        poll_until(lambda: fleet.known_workers() == set(fleet.urls), SETTLE_S,
                   what="both workers registered with the router")
        return fleet

    yield make
    for registrar in registrars:
        registrar.stop()


async def add_adapters(fleet: RealFleet, model: TinyModel, names: list[str]) -> None:
    for name in names:
        path = model.make_adapter(fleet.adapters_root, name)
        reply = await call("POST", f"{fleet.router.url}/v1/load_lora_adapter",
                           {"lora_name": name, "lora_path": str(path)})
        assert reply.status == 200, reply.text
    for name in names:
        await until(lambda n=name: fleet.holders(n), SETTLE_S, f"{name} loaded on a worker")


def assert_no_secret(replies: list[Reply], *logs: Path) -> None:
    for reply in replies:
        assert WORKER_KEY not in reply.text and WORKER_KEY not in str(reply.headers)
    for log in logs:
        assert WORKER_KEY not in log.read_text(errors="replace"), log


async def test_router_serves_each_adapter_from_a_holder_streams_and_deletes_everywhere(
        real_fleet: Callable[..., RealFleet], tiny_model: TinyModel) -> None:
    fleet = real_fleet()
    names = ["e2e-a", "e2e-b", "e2e-c"]
    await add_adapters(fleet, tiny_model, names)
    prompt = tiny_model.probe_prompt
    replies: list[Reply] = []
    served_by = {w["id"] for w in fleet.router_status()["workers"]}

    outputs = {}
    for name in names:
        reply = await greedy(fleet.router.url, name, prompt)
        replies.append(reply)
        assert reply.status == 200, reply.text
        text = reply.json()["choices"][0]["text"]
        assert reply.headers[WORKER_HEADER] in served_by, reply.headers
        # The adapter's own output, which only a worker holding it can give.
        assert text.split() == tiny_model.probe_outputs[name].split()
        assert await fleet.direct_text(name, prompt) == text
        outputs[name] = text
    base = await greedy_text(fleet.router.url, tiny_model.served_name, prompt)
    assert len({*outputs.values(), base}) == len(names) + 1, outputs
    _expect_and_plain_on_one_connection(fleet, names, prompt, outputs)

    chat = {"model": names[0], "messages": [{"role": "user", "content": "tell me a story"}],
            "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    plain = await call("POST", f"{fleet.router.url}/v1/chat/completions", chat)
    streamed = await call("POST", f"{fleet.router.url}/v1/chat/completions",
                          {**chat, "stream": True})
    replies += [plain, streamed]
    assert plain.status == 200 and streamed.status == 200, (plain.text, streamed.text)
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    words = [d for d in chat_deltas(streamed.text) if d]
    assert 1 <= len(words) <= 8  # one delta per engine step: two tokens may share one under load
    assert "".join(words) == plain.json()["choices"][0]["message"]["content"]

    gone = names[1]
    reply = await call("DELETE", f"{fleet.router.url}/v1/loras/{gone}")
    replies.append(reply)
    assert reply.status in (200, 204), reply.text
    await until(lambda: _nowhere(fleet, gone), SETTLE_S, f"{gone} unloaded everywhere")
    reply = await greedy(fleet.router.url, gone, prompt)
    assert reply.status == 404, reply.text
    for name in (names[0], names[2]):
        assert await greedy_text(fleet.router.url, name, prompt) == outputs[name]
    assert_no_secret(replies, *fleet.logs())


def _expect_and_plain_on_one_connection(fleet: RealFleet, names: list[str], prompt: str,
                                        outputs: Mapping[str, str]) -> None:
    """uvicorn (vLLM's server) answers `Expect: 100-continue` with an interim 100 when the header
    reaches it; each request still gets its own adapter's answer, and so do the plain ones after."""
    with Wire(fleet.router.port) as wire:
        for i in range(2 * len(names)):
            name = names[i % len(names)]
            body = json.dumps({"model": name, "prompt": prompt, "max_tokens": GREEDY_TOKENS, "temperature": 0,
                               "ignore_eos": True}).encode()
            if i % 2:
                wire.send(head("/v1/completions", "-", None, len(body)) + body)
            else:
                wire.send(head("/v1/completions", "-", {"Expect": "100-continue"}, len(body)))
                assert wire.answer().status == 100
                wire.send(body)
            answer = wire.final()
            assert answer.status == 200, answer.body[:300]
            assert json.loads(answer.body)["choices"][0]["text"] == outputs[name]


async def _nowhere(fleet: RealFleet, name: str) -> bool:
    return not await fleet.holders(name)


async def test_a_killed_worker_is_reloaded_and_shared_adapters_never_fail(
        real_fleet: Callable[..., RealFleet], tiny_model: TinyModel) -> None:
    fleet = real_fleet({"adapters": {"dual-*": {"min_replicas": 2}}})
    dual = ["dual-x", "dual-y"]
    await add_adapters(fleet, tiny_model, [*dual, "single-z"])
    for name in dual:
        await until(lambda n=name: _on_all(fleet, n), SETTLE_S, f"{name} on both workers")
    expected = {n: await greedy_text(fleet.router.url, n, tiny_model.probe_prompt) for n in dual}

    victim = fleet.workers[0]
    victim.kill()
    # Requests for adapters with another holder must all succeed while the victim is
    # down and while it comes back.
    failures: list[str] = []
    stop = asyncio.Event()

    served_while_down = 0
    back = asyncio.Event()
    """Set once the victim answers its health check again: until then it serves nothing, even while its new
    process runs (the process alone was too short a window to count on)."""

    async def keep_asking() -> None:
        nonlocal served_while_down
        while not stop.is_set():
            for name in dual:
                victim_down = not back.is_set()
                reply = await greedy(fleet.router.url, name, tiny_model.probe_prompt)
                if reply.status != 200 or reply.json()["choices"][0]["text"] != expected[name]:
                    failures.append(f"{name}: {reply.status} {reply.text[:200]}")
                elif victim_down:
                    served_while_down += 1

    asker = asyncio.create_task(keep_asking())
    try:
        await asyncio.to_thread(victim.start, 180.0)
        back.set()
        for name in dual:
            await until(lambda n=name: _on_all(fleet, n), SETTLE_S,
                        f"{name} re-loaded on the restarted worker")
    finally:
        stop.set()
        await asker
    assert not failures, failures[:5]
    assert served_while_down > 0, "no request was served while the worker was down"
    assert await greedy_text(victim_url := base_url(victim), dual[0], tiny_model.probe_prompt,
                             AUTH) == expected[dual[0]], victim_url
    assert (await listed(victim_url, AUTH)).keys() >= set(dual)
    assert_no_secret([], *fleet.logs())


async def _on_all(fleet: RealFleet, name: str) -> bool:
    return len(await fleet.holders(name)) == len(fleet.workers)


@pytest.mark.parametrize("chat", [False, True], ids=["completions", "chat"])
async def test_a_stream_whose_worker_is_killed_mid_way_continues_on_the_other_as_the_direct_answer(
        real_fleet: Callable[..., RealFleet], tiny_model: TinyModel, chat: bool) -> None:
    """Request migration on real vLLM: greedy decoding, the serving worker SIGKILLed after a few chunks;
    the client's text is the answer a worker gives directly, and the stream ends once with [DONE]."""
    fleet = real_fleet({"adapters": {"mig-*": {"min_replicas": 2}}})
    name = "mig-a"
    await add_adapters(fleet, tiny_model, [name])
    await until(lambda: _on_all(fleet, name), SETTLE_S, f"{name} on both workers")
    route = "/v1/chat/completions" if chat else "/v1/completions"
    body: dict[str, Any] = {"model": name, "max_tokens": MIGRATED_TOKENS, "temperature": 0, "ignore_eos": True}
    body |= ({"messages": [{"role": "user", "content": tiny_model.probe_prompt}]} if chat
             else {"prompt": tiny_model.probe_prompt})
    direct = await call("POST", f"{fleet.urls[1]}{route}", body, AUTH)
    assert direct.status == 200, direct.text
    choice = direct.json()["choices"][0]
    reference = choice["message"]["content"] if chat else choice["text"]
    workers = {w["id"]: w["url"] for w in fleet.router_status()["workers"]}
    by_url = {base_url(w): w for w in fleet.workers}
    pieces: list[str] = []
    events: list[str] = []
    async with aiohttp.ClientSession() as session, \
            session.post(f"{fleet.router.url}{route}", json={**body, "stream": True}) as resp:
        assert resp.status == 200
        victim = by_url[workers[resp.headers[WORKER_HEADER]]]
        async for line in resp.content:
            text = line.decode().strip()
            if not text.startswith("data: "):
                continue
            events.append(text[6:])
            if text[6:] != "[DONE]":
                for c in json.loads(text[6:]).get("choices", []):
                    pieces.append((c["delta"].get("content") if chat else c["text"]) or "")
            if len(pieces) == 3 and victim.alive():
                victim.kill()
    assert not victim.alive()
    assert events.count("[DONE]") == 1 and events[-1] == "[DONE]", events[-3:]
    assert "".join(pieces) == reference
    metrics = (await call("GET", f"{fleet.router.url}/metrics")).text
    assert 'lora_router_migrations_total{outcome="continued"} 1.0' in metrics, "the kill came after the answer"
