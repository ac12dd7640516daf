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

import pytest
from openai_calls import (
    GREEDY_TOKENS,
    bearer,
    call,
    chat_deltas,
    greedy,
    greedy_text,
    listed,
    sse_events,
)
from vllm_backend import TinyModel, running, vllm_worker

from router.localfleet import base_url
from router.procs import ManagedProcess

pytestmark = [pytest.mark.real_vllm, pytest.mark.timeout(300)]

API_KEY = "worker-key-for-tests-7f3a"
AUTH = bearer(API_KEY)


@pytest.fixture(scope="module")
def adapters_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def worker(tiny_model: TinyModel, adapters_root: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    preloaded = tiny_model.make_adapter(adapters_root, "preloaded")
    proc = vllm_worker(tiny_model, tmp_path_factory.mktemp("logs"), api_key=API_KEY,
                       lora_modules={"preloaded": preloaded})
    with running([proc]):
        yield base_url(proc)


async def test_api_key_guards_v1_routes_but_not_health(worker: str) -> None:
    assert (await call("GET", f"{worker}/v1/models")).status == 401
    assert (await call("GET", f"{worker}/v1/models", headers=bearer("not-the-key"))).status == 401
    assert (await call("GET", f"{worker}/health")).status == 200


async def test_startup_adapter_is_listed_and_matches_the_torch_reference(
        worker: str, tiny_model: TinyModel) -> None:
    cards = await listed(worker, AUTH)
    assert cards[tiny_model.served_name]["parent"] is None
    assert cards["preloaded"]["parent"] == tiny_model.served_name
    for model in (tiny_model.served_name, "preloaded"):
        text = await greedy_text(worker, model, tiny_model.probe_prompt, AUTH)
        assert text.split() == tiny_model.probe_outputs[model].split()


async def test_runtime_loaded_adapters_change_output_and_unload_cleanly(
        worker: str, tiny_model: TinyModel, adapters_root: Path) -> None:
    names = ("rt-one", "rt-two")
    for name in names:
        path = tiny_model.make_adapter(adapters_root, name)
        reply = await call("POST", f"{worker}/v1/load_lora_adapter",
                           {"lora_name": name, "lora_path": str(path)}, AUTH)
        assert reply.status == 200 and name in reply.text, reply.text
    cards = await listed(worker, AUTH)
    assert {cards[n]["root"] for n in names} == {str(adapters_root / n) for n in names}

    outputs = {m: await greedy_text(worker, m, tiny_model.probe_prompt, AUTH)
               for m in (tiny_model.served_name, *names)}
    assert len({o.strip() for o in outputs.values()}) == 3, outputs
    for name in names:
        assert outputs[name].split() == tiny_model.probe_outputs[name].split()

    unload = {"lora_name": names[0]}
    reply = await call("POST", f"{worker}/v1/unload_lora_adapter", unload, AUTH)
    assert reply.status == 200, reply.text
    assert names[0] not in await listed(worker, AUTH)
    reply = await greedy(worker, names[0], "hello", AUTH)
    assert reply.status == 404 and reply.json()["error"]["param"] == "model", reply.text
    assert (await call("POST", f"{worker}/v1/unload_lora_adapter", unload, AUTH)).status == 404
    assert await greedy_text(worker, names[1], tiny_model.probe_prompt, AUTH) == outputs[names[1]]


async def test_streamed_chat_deltas_are_whole_words_that_add_up_to_the_plain_answer(
        worker: str) -> None:
    body = {"model": "preloaded", "messages": [{"role": "user", "content": "tell me a story"}],
            "max_tokens": GREEDY_TOKENS, "temperature": 0, "ignore_eos": True}
    reply = await call("POST", f"{worker}/v1/chat/completions", body, AUTH)
    assert reply.status == 200, reply.text
    plain = reply.json()["choices"][0]["message"]["content"]

    reply = await call("POST", f"{worker}/v1/chat/completions",
                       {**body, "stream": True, "stream_options": {"include_usage": True}}, AUTH)
    assert reply.status == 200, reply.text
    words = [d for d in chat_deltas(reply.text) if d]
    # A token the word-level tokenizer decodes to nothing (a special token the random model may pick)
    # yields no delta, so there may be fewer non-empty deltas than tokens, never more.
    assert 0 < len(words) <= GREEDY_TOKENS and all(w.strip() for w in words), words
    assert "".join(words) == plain
    usage = json.loads(sse_events(reply.text)[-2])
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == GREEDY_TOKENS


async def test_two_workers_on_their_own_cores_give_identical_greedy_output(
        start_vllm_workers: Any, tiny_model: TinyModel, tmp_path: Path) -> None:
    path = tiny_model.make_adapter(tmp_path, "shared")
    procs: list[ManagedProcess] = start_vllm_workers(2, lora_modules={"shared": path})
    texts = [await greedy_text(base_url(p), "shared", tiny_model.probe_prompt) for p in procs]
    assert texts[0] == texts[1]
    assert texts[0].split() == tiny_model.probe_outputs["shared"].split()
