"""The chat scenario: sessions share prefixes, the engines cache them, and the simulated router's own
prefix-aware picking (router.core.prefix through routing.decide) is what keeps them cached."""

from __future__ import annotations

import numpy as np
import pytest

import bench.sim.strategies as strategies
from bench.perfmodel import EngineModel, PerfParams, Sequence
from bench.sim.scenarios import SCENARIOS, Setup, Shape, names, run_strategy
from bench.workloads import Chat, Lengths, chat, prompt_blocks
from router.core.prefix import PrefixRules


def test_every_turn_extends_its_session_s_previous_prompt() -> None:
    r = chat(np.random.default_rng(3), 2000, 30, 1.1, 20.0, Chat(), Lengths())
    assert r.session is not None and r.system_tokens is not None
    assert np.all(np.diff(r.time) >= 0)
    last: dict[int, tuple[int, int]] = {}
    for i in range(len(r)):
        s, p, a = int(r.session[i]), int(r.prompt_tokens[i]), int(r.adapter[i])
        if s in last:
            assert last[s][1] == a and p > last[s][0]
            before = prompt_blocks(a, s, int(r.system_tokens[i]), last[s][0], 16)
            assert prompt_blocks(a, s, int(r.system_tokens[i]), p, 16)[:len(before)] == before
        last[s] = (p, a)
    turns = np.bincount(r.session[r.session >= 0])
    assert turns[turns > 0].max() >= Chat().min_turns


def test_the_engine_prefills_only_what_its_prefix_cache_lacks() -> None:
    engine = EngineModel(PerfParams(max_loras=1, kv_blocks=10, speed=1.0))
    first = prompt_blocks(0, 1, 64, 100, 16)  # 6 full blocks: 4 of the system prompt, 2 of the session
    engine.submit(Sequence(1, "a0", 100, 1, 0.0, first))
    cold = engine.step()
    engine.submit(Sequence(2, "a0", 120, 1, 0.0, prompt_blocks(0, 1, 64, 120, 16)))
    warm = engine.step()
    assert engine.prefix_hits == 96 and engine.prefix_queries == 220
    assert warm.duration_s < cold.duration_s
    engine.submit(Sequence(3, "a0", 200, 1, 0.0, prompt_blocks(0, 2, 64, 200, 16)))  # 12 blocks > 10: evicts
    engine.step()
    assert len(engine.kv) == 10 and engine.prefix_hits == 96 + 64


def test_the_simulated_router_keeps_conversations_where_their_prefix_is(monkeypatch: pytest.MonkeyPatch) -> None:
    shape = Shape(workers=8, adapters=40, requests=6000, max_loras=4)
    requests = SCENARIOS["chat"](np.random.default_rng(2), shape, Lengths())
    setup = Setup(workers=shape.workers, max_loras=shape.max_loras)
    picked, _ = run_strategy("lora-router", requests, names(shape.adapters), setup, 2)
    spread, _ = run_strategy("round-robin", requests, names(shape.adapters), setup, 2)
    monkeypatch.setattr(strategies, "PrefixRules", lambda **kw: PrefixRules(**kw | {"index_blocks": 0}))
    blind, _ = run_strategy("lora-router", requests, names(shape.adapters), setup, 2)
    assert picked.prefix_hit_rate > blind.prefix_hit_rate > spread.prefix_hit_rate
