"""What a live run sends: completions as before, and for the chat scenario, conversations whose turns
extend each other."""

from __future__ import annotations

import msgspec
import numpy as np

from bench.live.bodies import CHAT, COMPLETIONS, bodies, content_words
from bench.sim.scenarios import SCENARIOS, Shape, names
from bench.workloads import Lengths

SHAPE = Shape(workers=4, adapters=12, max_loras=2, requests=400, rps_per_worker=4.0)


def _chat_requests():
    return SCENARIOS["chat"](np.random.default_rng(3), SHAPE, Lengths())


def test_other_scenarios_send_the_same_completions_as_before() -> None:
    requests = SCENARIOS["zipf"](np.random.default_rng(3), SHAPE, Lengths())
    path, out = bodies(requests, names(SHAPE.adapters))
    assert path == COMPLETIONS and len(out) == len(requests)
    first = msgspec.json.decode(out[0])
    assert first == {"model": f"a{requests.adapter[0]}", "prompt": " ".join(["w"] * int(requests.prompt_tokens[0])),
                     "max_tokens": int(requests.output_tokens[0]), "ignore_eos": True, "stream": True}


def test_each_turn_extends_the_previous_turn_and_counts_prompt_tokens_words() -> None:
    requests = _chat_requests()
    path, out = bodies(requests, names(SHAPE.adapters))
    assert path == CHAT and len(out) == len(requests)
    decoded = [msgspec.json.decode(b) for b in out]
    last: dict[int, int] = {}
    extended = 0
    for i, (body, session) in enumerate(zip(decoded, requests.session.tolist(), strict=True)):
        messages = body["messages"]
        assert body["model"] == f"a{requests.adapter[i]}" and body["stream"] and body["ignore_eos"]
        assert body["max_tokens"] == requests.output_tokens[i]
        assert content_words(messages) == requests.prompt_tokens[i], "the worker counts the prompt as the workload"
        assert messages[0] == {"role": "system", "content": messages[0]["content"]}
        assert len(messages[0]["content"].split()) == requests.system_tokens[i]
        assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * (len(messages) // 2 - 1) + ["user"]
        if session in last:
            before = decoded[last[session]]["messages"]
            assert messages[:len(before)] == before, "turn t+1 starts with turn t's messages"
            answer = messages[len(before)]
            assert answer["role"] == "assistant"
            assert len(answer["content"].split()) == requests.output_tokens[last[session]], "then turn t's answer"
            assert len(messages) == len(before) + 2
            extended += 1
        else:
            assert len(messages) == 2, "a session's first turn: the system prompt and one user message"
        last[session] = i
    assert extended > len(requests) // 2, "most turns continue a session"


def test_the_text_is_deterministic_shared_per_adapter_and_distinct_per_session() -> None:
    requests = _chat_requests()
    once, again = bodies(requests, names(SHAPE.adapters))[1], bodies(requests, names(SHAPE.adapters))[1]
    assert once == again
    decoded = [msgspec.json.decode(b)["messages"] for b in once]
    systems: dict[int, str] = {}
    users: set[str] = set()
    for messages, adapter in zip(decoded, requests.adapter.tolist(), strict=True):
        assert systems.setdefault(adapter, messages[0]["content"]) == messages[0]["content"]
        users.add(messages[-1]["content"])
    assert len(set(systems.values())) == len(systems), "every adapter has its own system prompt"
    assert len(users) == len(requests), "no two turns ask the same"

