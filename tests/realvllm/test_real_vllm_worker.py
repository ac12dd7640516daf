"""Real vLLM on the CPU: the worker surface the router relies on, checked against vLLM itself.

One server (API key set, one adapter registered at start-up) serves the whole
module; each test uses adapters of its own names so that tests do not see
each other's adapters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from vllm_backend import TinyModel, running, usable_cores, vllm_worker

from router.devfleet import worker_url
from router.procs import ManagedProcess

pytestmark = [pytest.mark.real_vllm, pytest.mark.timeout(300)]

API_KEY = "worker-key-for-tests-7f3a"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
TOKENS = 12


@pytest.fixture(scope="module")
def adapters_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def worker(tiny_model: TinyModel, adapters_root: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    preloaded = tiny_model.make_adapter(adapters_root, "preloaded")
    proc = vllm_worker(tiny_model, tmp_path_factory.mktemp("logs"), core=usable_cores()[-1],
                       api_key=API_KEY, lora_modules={"preloaded": preloaded})
    with running([proc]):
        yield worker_url(proc)


async def call(method: str, url: str, body: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, str]:
    sent = AUTH if headers is None else headers
    async with aiohttp.ClientSession() as session, \
            session.request(method, url, json=body, headers=sent) as resp:
        return resp.status, await resp.text()


async def complete(url: str, model: str, prompt: str) -> str:
    status, text = await call("POST", f"{url}/v1/completions", {
        "model": model, "prompt": prompt, "max_tokens": TOKENS, "temperature": 0,
        "ignore_eos": True})
    assert status == 200, text
    body = json.loads(text)
    assert body["model"] == model
    return str(body["choices"][0]["text"])


async def listed(url: str) -> dict[str, dict[str, Any]]:
    status, text = await call("GET", f"{url}/v1/models")
    assert status == 200, text
    return {card["id"]: card for card in json.loads(text)["data"]}


async def test_api_key_guards_v1_routes_but_not_health(worker: str) -> None:
    assert (await call("GET", f"{worker}/v1/models", headers={}))[0] == 401
    wrong = {"Authorization": "Bearer not-the-key"}
    assert (await call("GET", f"{worker}/v1/models", headers=wrong))[0] == 401
    assert (await call("GET", f"{worker}/health", headers={}))[0] == 200


async def test_startup_adapter_is_listed_and_matches_the_torch_reference(
        worker: str, tiny_model: TinyModel) -> None:
    cards = await listed(worker)
    assert cards[tiny_model.served_name]["parent"] is None
    assert cards["preloaded"]["parent"] == tiny_model.served_name
    for model in (tiny_model.served_name, "preloaded"):
        text = await complete(worker, model, tiny_model.probe_prompt)
        assert text.split() == tiny_model.probe_outputs[model].split()


async def test_runtime_loaded_adapters_change_output_and_unload_cleanly(
        worker: str, tiny_model: TinyModel, adapters_root: Path) -> None:
    names = ("rt-one", "rt-two")
    for name in names:
        path = tiny_model.make_adapter(adapters_root, name)
        status, text = await call("POST", f"{worker}/v1/load_lora_adapter",
                                  {"lora_name": name, "lora_path": str(path)})
        assert status == 200 and name in text, text
    cards = await listed(worker)
    assert {cards[n]["root"] for n in names} == {str(adapters_root / n) for n in names}

    outputs = {m: await complete(worker, m, tiny_model.probe_prompt)
               for m in (tiny_model.served_name, *names)}
    assert len({o.strip() for o in outputs.values()}) == 3, outputs
    for name in names:
        assert outputs[name].split() == tiny_model.probe_outputs[name].split()

    status, text = await call("POST", f"{worker}/v1/unload_lora_adapter", {"lora_name": names[0]})
    assert status == 200, text
    assert names[0] not in await listed(worker)
    status, text = await call("POST", f"{worker}/v1/completions",
                              {"model": names[0], "prompt": "hello", "max_tokens": 2})
    assert status == 404 and json.loads(text)["error"]["param"] == "model", text
    status, _ = await call("POST", f"{worker}/v1/unload_lora_adapter", {"lora_name": names[0]})
    assert status == 404
    assert await complete(worker, names[1], tiny_model.probe_prompt) == outputs[names[1]]


async def test_streamed_chat_deltas_are_whole_words_that_add_up_to_the_plain_answer(
        worker: str, tiny_model: TinyModel) -> None:
    body = {"model": "preloaded", "messages": [{"role": "user", "content": "tell me a story"}],
            "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True}
    status, text = await call("POST", f"{worker}/v1/chat/completions", body)
    assert status == 200, text
    plain = json.loads(text)["choices"][0]["message"]["content"]

    status, text = await call("POST", f"{worker}/v1/chat/completions",
                              {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert status == 200, text
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]]
    words = [d for d in deltas if d]
    assert len(words) == TOKENS and all(w.strip() for w in words), deltas
    assert "".join(words) == plain
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == TOKENS


async def test_two_workers_on_their_own_cores_give_identical_greedy_output(
        start_vllm_workers: Any, tiny_model: TinyModel, tmp_path: Path) -> None:
    path = tiny_model.make_adapter(tmp_path, "shared")
    procs: list[ManagedProcess] = start_vllm_workers(2, lora_modules={"shared": path})
    urls = [worker_url(p) for p in procs]
    texts = [await complete(u, "shared", tiny_model.probe_prompt) for u in urls]
    assert texts[0] == texts[1]
    assert texts[0].split() == tiny_model.probe_outputs["shared"].split()
