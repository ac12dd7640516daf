"""The simulated worker's prefix cache: blocks cut from the request's own text, vLLM's counters on /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bench.live.bodies import text
from bench.promtext import metric_sum
from bench.worker.engine import prompt_blocks
from bench.worker.server import SimulatedWorker, WorkerOptions
from router.localfleet import make_adapter_dir

QUERIES = "vllm:prefix_cache_queries_total"
HITS = "vllm:prefix_cache_hits_total"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    modules = {n: str(make_adapter_dir(tmp_path, n)) for n in ("a0", "a1")}
    worker = SimulatedWorker(WorkerOptions(model="base", max_loras=2, speed=0.0, lora_modules=modules))
    async with TestClient(TestServer(worker.app())) as c:
        yield c


async def _counters(client: TestClient) -> tuple[float, float]:
    body = await (await client.get("/metrics")).text()
    return metric_sum(body, QUERIES), metric_sum(body, HITS)


async def _chat(client: TestClient, model: str, messages: list[dict[str, str]]) -> tuple[float, float]:
    """The (queried, hit) prompt tokens this request added to the counters."""
    before = await _counters(client)
    r = await client.post("/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": 2,
                                                        "ignore_eos": True, "stream": True})
    assert r.status == 200
    await r.read()
    after = await _counters(client)
    return after[0] - before[0], after[1] - before[1]


def _conversation(turns: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": text(1, 0, 0, 100)}]
    for t in range(turns):
        messages.append({"role": "user", "content": text(2, 7, t, 30)})
        if t < turns - 1:
            messages.append({"role": "assistant", "content": text(3, 7, t, 20)})
    return messages


async def test_the_counters_are_vllms_series_at_zero_before_any_request(client: TestClient) -> None:
    body = await (await client.get("/metrics")).text()
    for name, help_ in ((QUERIES, "Prefix cache queries, in terms of number of queried tokens."),
                        (HITS, "Prefix cache hits, in terms of number of cached tokens.")):
        assert f"# HELP {name} {help_}\n# TYPE {name} counter\n" in body
        assert f'{name}{{engine="0",model_name="base"}} 0.0\n' in body


async def test_a_repeated_chat_prompt_hits_and_another_adapter_with_the_same_text_does_not(
        client: TestClient) -> None:
    messages = _conversation(1)
    assert await _chat(client, "a0", messages) == (130, 0), "first sight: every prompt word queried, none found"
    queried, hit = await _chat(client, "a0", messages)
    assert queried == 130 and hit == 128, "every full 16-word block of the rendering found"
    assert await _chat(client, "a1", messages) == (130, 0), "the same text under another adapter is other blocks"
    assert await _chat(client, "base", messages) == (130, 0)


async def test_a_conversations_next_turn_finds_the_previous_turns_prompt(client: TestClient) -> None:
    first = _conversation(1)
    await _chat(client, "a0", first)
    queried, hit = await _chat(client, "a0", _conversation(2))
    assert queried == 180
    rendered = 2 + 130 + 1  # role words of the system and user messages, and the assistant's turn opened
    assert hit == rendered // 16 * 16, "the blocks wholly inside the previous turn's rendering"


def test_blocks_are_chained_and_seeded_with_the_model() -> None:
    words = text(1, 1, 1, 40).split()
    blocks = prompt_blocks("a0", words, 16, len(words))
    assert len(blocks) == 2 and len(set(blocks)) == 2
    assert prompt_blocks("a0", [*words[:32], "other"], 16, 33) == blocks, "a prompt that starts alike shares"
    assert prompt_blocks("a0", ["other", *words[1:]], 16, 40)[1] != blocks[1], "a block depends on all before"
    assert not set(prompt_blocks("a1", words, 16, 40)) & set(blocks)
    assert prompt_blocks("a0", words, 16, 31) == blocks[:1], "no more words than the prompt's tokens"
