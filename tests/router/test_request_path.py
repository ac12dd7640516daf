"""The front door end to end: real etcd, simulated workers and the router as real processes."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import aiohttp
import openai
import pytest

from router.localfleet import base_url
from router.waiting import wait_until

BASE = "sim-base"


def _get_json(url: str, headers: dict[str, str] | None = None) -> dict:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _held(url: str) -> set[str]:
    return {m["id"] for m in _get_json(url + "/v1/models")["data"] if m["parent"] is not None}


def _config(adapter_root: Path, names: list[str], **extra: object) -> dict[str, object]:
    config: dict[str, object] = {
        "security": {"allowed_path_prefixes": [str(adapter_root)]},
        "control": {"tick_s": 0.5, "reconcile_s": 1.0, "lease_ttl_s": 3},
        "adapters": [{"name": n, "source": str(adapter_root / n), "base_model": BASE} for n in names],
    }
    config.update(extra)
    return config


@pytest.fixture
def fleet(start_workers: Callable, start_router: Callable, adapter_dirs: Callable, poll_until: Callable):
    """3 workers, 20 catalog adapters placed on them, one router."""

    def make(n_workers: int = 3, n_adapters: int = 20, **extra: object):
        names = [f"ad-{i}" for i in range(n_adapters)]
        root = adapter_dirs(names[0]).parent
        for n in names[1:]:
            adapter_dirs(n)
        workers = start_workers(n_workers, extra_args=("--speed", "0.01", "--max-loras", "4"))
        urls = [base_url(w) for w in workers]
        router = start_router(_config(root, names, **extra), workers=urls)
        return router, workers, urls, names

    return make


def test_openai_client_chat_and_completions_through_the_router(fleet, poll_until) -> None:
    router, *_ = fleet(n_workers=2, n_adapters=3, aliases={"support": {"ad-1": 9, "ad-2": 1}})
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused")
    for model in ("ad-0", f"{BASE}@ad-0", "support"):
        chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5, extra_body={"ignore_eos": True})
        assert chat.choices[0].message.content
        assert chat.model in {"ad-0", "ad-1", "ad-2"}, "the worker sees the adapter's own name"
        done = client.completions.create(model=model, prompt="hello", max_tokens=5,
                                         extra_body={"ignore_eos": True})
        assert done.choices[0].text
        chunks = list(client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True,
            extra_body={"ignore_eos": True}))
        assert [c for c in chunks if c.choices and c.choices[0].finish_reason]
        text = "".join(c.choices[0].text for c in client.completions.create(
            model=model, prompt="hello", max_tokens=4, stream=True, extra_body={"ignore_eos": True}) if c.choices)
        assert text
    models = {m.id: m for m in client.models.list().data}
    assert {BASE, "ad-0", "ad-1", "ad-2", "support"} <= set(models)


def test_every_request_is_served_by_a_holder(fleet, poll_until) -> None:
    router, _, _, names = fleet()

    async def run() -> list[tuple[str, str]]:
        async with aiohttp.ClientSession() as s:
            async def one(name: str) -> tuple[str, str]:
                body = {"model": name, "prompt": "x", "max_tokens": 2, "ignore_eos": True}
                async with s.post(router.url + "/v1/completions", json=body) as r:
                    assert r.status == 200, await r.text()
                    return name, r.headers["x-lora-router-worker"]
            return await asyncio.gather(*(one(n) for n in names * 3))

    served = asyncio.run(run())
    status = _get_json(router.url + "/v1/router/status")
    by_id = {w["id"]: w["url"] for w in status["workers"]}
    holdings = {wid: _held(url) for wid, url in by_id.items()}
    for name, worker in served:
        assert name in holdings[worker], f"{name} served by {worker}, which does not hold it"


def test_concurrent_first_requests_for_a_cold_adapter_share_one_load(fleet) -> None:
    router, _, urls, _ = fleet(n_adapters=1, placement={"defaults": {"min_replicas": 0}})
    assert all("ad-0" not in _held(u) for u in urls), "min_replicas 0: nothing loaded before demand"

    async def run() -> list[int]:
        async with aiohttp.ClientSession() as s:
            async def one() -> int:
                body = {"model": "ad-0", "prompt": "x", "max_tokens": 2, "ignore_eos": True}
                async with s.post(router.url + "/v1/completions", json=body) as r:
                    await r.read()
                    return r.status
            return await asyncio.gather(*(one() for _ in range(50)))

    assert asyncio.run(run()) == [200] * 50
    metrics = urllib.request.urlopen(router.url + "/metrics").read().decode()
    loaded = [line for line in metrics.splitlines()
              if line.startswith("lora_router_cold_starts_total") and 'outcome="loaded"' in line]
    assert loaded and float(loaded[0].rsplit(" ", 1)[1]) == 1.0, loaded
    assert sum("ad-0" in _held(u) for u in urls) == 1


def test_a_killed_worker_loses_no_request_that_another_holder_could_serve(fleet) -> None:
    router, workers, urls, names = fleet(n_adapters=2, placement={"defaults": {"min_replicas": 3}})

    async def run() -> list[int]:
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> int:
                if i == 40:
                    workers[0].kill()
                body = {"model": names[i % 2], "prompt": "x", "max_tokens": 4, "ignore_eos": True}
                async with s.post(router.url + "/v1/completions", json=body) as r:
                    await r.read()
                    return r.status
            sem = asyncio.Semaphore(8)

            async def bounded(i: int) -> int:
                async with sem:
                    return await one(i)
            return await asyncio.gather(*(bounded(i) for i in range(200)))

    _wait_held_everywhere(urls, names)
    statuses = asyncio.run(run())
    assert statuses == [200] * 200, {s: statuses.count(s) for s in set(statuses)}


def _wait_held_everywhere(urls: list[str], names: list[str], timeout_s: float = 20.0) -> None:
    wait_until(lambda: all(set(names) <= _held(u) for u in urls), timeout_s=timeout_s, interval_s=0.1,
               what="placement loading the adapters on every worker")


def _running(url: str) -> float:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    line = next(line for line in text.splitlines() if line.startswith("vllm:num_requests_running{"))
    return float(line.rsplit(" ", 1)[1])


def test_a_client_that_goes_away_cancels_the_upstream_stream(fleet, poll_until) -> None:
    router, _, urls, names = fleet(n_workers=1, n_adapters=1)
    body = {"model": names[0], "prompt": "x", "max_tokens": 500_000, "ignore_eos": True, "stream": True}

    async def read_a_little_then_leave() -> None:
        async with aiohttp.ClientSession() as s, s.post(router.url + "/v1/completions", json=body) as r:
            assert r.status == 200
            await r.content.readline()

    asyncio.run(read_a_little_then_leave())
    poll_until(lambda: _running(urls[0]) == 0.0, timeout_s=10, what="the worker to drop the abandoned stream")


def test_a_router_started_before_etcd_waits_for_it(tmp_path, poll_until) -> None:
    from discovery.embedded import EmbeddedEtcd
    from discovery.ports import free_port
    from router.procs import ManagedProcess, python_cli

    etcd = EmbeddedEtcd(tmp_path / "late-etcd")
    port = free_port()
    router = ManagedProcess(python_cli("router", "serve", "--port", str(port), "--etcd", etcd.endpoint),
                            log_path=tmp_path / "router.log")
    router.start()
    try:
        poll_until(lambda: "cannot connect to etcd yet" in router.log_path.read_text(), timeout_s=30,
                   what="the router to report that etcd is not there yet")
        assert router.alive()
        etcd.start()
        router.health_url = f"http://127.0.0.1:{port}/health"
        router.wait_healthy(30)
    finally:
        router.kill()
        etcd.kill()


def test_a_stream_whose_worker_dies_before_its_first_token_is_retried(start_workers: Callable,
                                                                     start_router: Callable,
                                                                     adapter_dirs: Callable, poll_until) -> None:
    """The worker sent its headers and died in the prefill: the client has seen nothing yet, so the
    stream is asked of the other holder and arrives whole, with no error event."""
    root = adapter_dirs("ad-0").parent
    workers = start_workers(2, extra_args=("--speed", "1", "--max-model-len", "60000"))
    urls = [base_url(w) for w in workers]
    router = start_router(_config(root, ["ad-0"], placement={"defaults": {"min_replicas": 2}}), workers=urls)
    poll_until(lambda: all("ad-0" in _held(u) for u in urls), timeout_s=20, what="both workers holding it")
    prompt = " ".join(["x"] * 50_000)  # 50k prompt tokens: a prefill of about 2 s
    body = {"model": "ad-0", "prompt": prompt, "max_tokens": 3, "ignore_eos": True, "stream": True}

    async def stream_while_killing() -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as s:
            answer = asyncio.create_task(_post(s, router.url + "/v1/completions", body))
            busy = await asyncio.to_thread(
                poll_until, lambda: next((u for u in urls if _running(u) > 0), None), 20, 0.02,
                "the prefill to start")
            workers[urls.index(busy)].kill()
            return await answer

    status, raw = asyncio.run(stream_while_killing())
    assert status == 200
    assert raw.rstrip().endswith(b"data: [DONE]"), raw[-300:]
    assert b'"error"' not in raw


async def _post(s: aiohttp.ClientSession, url: str, body: dict) -> tuple[int, bytes]:
    async with s.post(url, json=body) as r:
        return r.status, await r.read()
