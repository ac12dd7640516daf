"""The prefix-cache baselines: sglang/vllm-router cache_aware, llm-d's endpoint picker, sticky sessions."""

from __future__ import annotations

import numpy as np
import pytest

from bench.perfmodel import PerfParams
from bench.sim.cache_baselines import CacheAware, LlmD, SessionHash, own_blocks
from bench.sim.fleet import SimFleet
from bench.sim.scenarios import SCENARIOS, Setup, Shape, names, run_strategy
from bench.sim.strategies import STRATEGIES, ConsistentHash
from bench.workloads import Lengths, Requests, prompt_blocks

NEW = ["cache-aware", "llm-d", "session-hash"]


def chat(rows: list[tuple[float, int, int, int, int]], system: int = 64) -> Requests:
    """Requests from (time, adapter, session, prompt tokens, output tokens); every adapter's system prompt
    is `system` tokens."""
    time, adapter, session, prompt, output = (np.array(c) for c in zip(*rows, strict=True))
    return Requests(time.astype(np.float64), adapter.astype(np.int32), prompt.astype(np.int32),
                    output.astype(np.int32), session.astype(np.int64), np.full(len(rows), system, dtype=np.int32))


def one_session_burst(n: int) -> Requests:
    """`n` turns of one conversation arriving together, each long enough to stay in flight till the last."""
    return chat([(i * 1e-4, 0, 0, 100 + 50 * i, 2000) for i in range(n)])


def test_cache_aware_keeps_a_session_on_its_worker_while_balanced() -> None:
    fleet = SimFleet(4, names(2), PerfParams())
    outcome = fleet.run(one_session_burst(8), CacheAware(fleet, 0).route)
    assert outcome.worker.tolist() == [0] * 8


def test_cache_aware_takes_the_shortest_queue_once_imbalanced() -> None:
    """With abs 2 and rel 1.5: the first turn goes to the smallest tree (all empty: the first worker), the
    next two match it while its load (1, then 2) exceeds the others' (0) by at most 2; the fourth finds
    3 - 0 > 2 and 3 > 0 x 1.5, so the least loaded worker, first on ties, takes it and each one after."""
    fleet = SimFleet(4, names(2), PerfParams())
    policy = CacheAware(fleet, 0, balance_abs_threshold=2, balance_rel_threshold=1.5)
    outcome = fleet.run(one_session_burst(6), policy.route)
    assert outcome.worker.tolist() == [0, 0, 0, 1, 2, 3]


def test_cache_aware_sglang_low_match_goes_to_the_smallest_tree() -> None:
    """Prompts without a session are text of their own: no match, so each goes to the worker whose tree
    is smallest (the first on ties), whose tree then grows by the prompt's 10 blocks."""
    rows = Requests(np.arange(8, dtype=np.float64) * 10.0, np.zeros(8, dtype=np.int32),
                    np.full(8, 160, dtype=np.int32), np.full(8, 4, dtype=np.int32))
    fleet = SimFleet(4, names(1), PerfParams())
    policy = CacheAware(fleet, 0, low_match="smallest-tree")
    outcome = fleet.run(rows, policy.route)
    assert outcome.worker.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [len(t) for t in policy.trees] == [20] * 4


def test_cache_aware_vllm_router_low_match_goes_to_the_least_loaded() -> None:
    """vllm-router's rule: no match goes to the worker with the fewest requests in flight (the first on
    ties), whatever its tree holds. Requests 10 s apart find every worker idle: all go to the first."""
    rows = Requests(np.arange(4, dtype=np.float64) * 10.0, np.zeros(4, dtype=np.int32),
                    np.full(4, 160, dtype=np.int32), np.full(4, 4, dtype=np.int32))
    fleet = SimFleet(4, names(1), PerfParams())
    policy = CacheAware(fleet, 0)
    assert fleet.run(rows, policy.route).worker.tolist() == [0, 0, 0, 0]
    busy = Requests(np.zeros(4), np.zeros(4, dtype=np.int32), np.full(4, 160, dtype=np.int32),
                    np.full(4, 400, dtype=np.int32))
    fleet = SimFleet(4, names(1), PerfParams())
    assert fleet.run(busy, CacheAware(fleet, 0).route).worker.tolist() == [0, 1, 2, 3]


def test_cache_aware_names_the_longest_match_and_evicts_tails_first() -> None:
    fleet = SimFleet(3, names(1), PerfParams())
    policy = CacheAware(fleet, 0, max_tree_size=4 * 16 * 4)
    policy.insert(1, (10, 11, 12))
    policy.insert(2, (10, 11, 12, 13, 14))
    assert policy.match((10, 11, 12, 13, 99)) == (4, 2)
    assert policy.match((10, 11, 7)) == (2, 1)  # both hold it: the first to insert it is named
    policy.evict(0.0)  # 4 blocks a tree at most: worker 2 loses its prompt's tail
    assert list(policy.trees[2]) == [13, 12, 11, 10]
    assert policy.match((10, 11, 12, 13, 14)) == (4, 2)
    assert 14 not in policy.holders


def test_llm_d_scores_by_its_weights() -> None:
    """Three pods, max_loras 2. Queues 4 / 0 / 2 score 0, 1, 0.5 (x2); nothing was sent through the picker,
    so KV scores 1 (x2); prefix (x3): pod 0 holds 3 of the 4 hashed blocks, pod 1 two of them — not its
    prompt's head, but the index counts a pod's blocks within the run some pod holds; LoRA (x1): a free
    slot 0.8 on pods 0 and 1, pod 2 runs another adapter and queues this one: 0.6. Pod 1's empty queue
    outweighs pod 0's match, until its queue is as long."""
    fleet = SimFleet(3, names(2), PerfParams(max_loras=2))
    picker = LlmD(fleet, 0)
    hashes = (5, 6, 7, 8)
    picker.add(0, (5, 6, 7))
    picker.add(1, (6, 7))
    fleet.workers[0].waiting[1] = 4
    fleet.workers[2].running[1] = 1
    fleet.workers[2].waiting.update({0: 1, 1: 1})
    expected = [2 * 0.0 + 2 * 1.0 + 3 * 0.75 + 0.8,
                2 * 1.0 + 2 * 1.0 + 3 * 0.5 + 0.8,
                2 * 0.5 + 2 * 1.0 + 3 * 0.0 + 0.6]
    assert picker.scores(0, hashes) == pytest.approx(expected)
    fleet.workers[1].waiting[1] = 4  # queues 4 / 4 / 2
    assert picker.scores(0, hashes) == pytest.approx([2.0 + 2.25 + 0.8, 2.0 + 1.5 + 0.8, 2.0 + 2.0 + 0.6])


def test_llm_d_kv_usage_counts_the_running_prompts() -> None:
    """Prompts of 160 and 40 tokens run together (10 + 3 blocks of 64); the third waits for a slot."""
    rows = Requests(np.array([0.0, 0.0, 0.0]), np.array([0, 0, 1], dtype=np.int32),
                    np.array([160, 40, 16], dtype=np.int32), np.array([500, 500, 2], dtype=np.int32))
    fleet = SimFleet(1, names(2), PerfParams(kv_blocks=64))
    picker = LlmD(fleet, 0)
    seen: list[float] = []
    fleet.at(1.0, lambda now: seen.append(picker.kv_usage(fleet.workers[0])))
    fleet.run(rows, picker.route)
    assert seen == [13 / 64]
    assert picker.kv_usage(fleet.workers[0]) == 0.0 and not picker.sent[0]


def test_llm_d_index_forgets_prompt_heads_first() -> None:
    """The index adds a prompt's blocks in order, so a full LRU drops the oldest prompt's first block."""
    fleet = SimFleet(2, names(1), PerfParams(kv_blocks=4))
    picker = LlmD(fleet, 0)
    picker.add(0, (1, 2, 3))
    picker.add(0, (4, 5))
    assert list(picker.lrus[0]) == [2, 3, 4, 5] and 1 not in picker.pods
    assert picker.scores(0, (1, 2, 3))[0] == picker.scores(0, (1, 2, 3))[1]  # no pod matches block 1


def test_llm_d_hashes_a_partial_block_and_stops_at_the_limit() -> None:
    rows = chat([(0.0, 0, 0, 40, 2), (1.0, 0, 1, 8, 2), (2.0, 0, 2, 16 * 300 + 5, 2)], system=32)
    fleet = SimFleet(2, names(1), PerfParams())
    picker = LlmD(fleet, 0)
    seen: list[tuple[int, ...]] = []

    def route(rid: int, adapter: int) -> None:
        seen.append(picker.hashes(rid))
        picker.route(rid, adapter)

    fleet.run(rows, route)
    assert seen[0] == (*prompt_blocks(0, 0, 32, 40, 16), *own_blocks(0, 2, 3))
    assert seen[1] == ()  # under one block: not hashed
    assert len(seen[2]) == 256 and seen[2] == prompt_blocks(0, 2, 32, 16 * 300 + 5, 16)[:256]


def test_session_hash_sends_every_turn_of_a_session_to_one_worker() -> None:
    shape = Shape(workers=6, adapters=20, max_loras=2, requests=1500, rps_per_worker=3.0)
    requests = SCENARIOS["chat"](np.random.default_rng(4), shape, Lengths())
    fleet = SimFleet(6, names(20), PerfParams(max_loras=2))
    outcome = fleet.run(requests, SessionHash(fleet, 4).route)
    assert requests.session is not None
    homes = {int(s): set(outcome.worker[requests.session == s].tolist()) for s in np.unique(requests.session)}
    assert all(len(h) == 1 for h in homes.values())
    assert len(set().union(*homes.values())) == 6


def test_session_hash_outside_a_session_is_consistent_hash() -> None:
    fleet = SimFleet(7, names(30), PerfParams())
    sticky, hashed = SessionHash(fleet, 0), ConsistentHash(fleet, 0, 1)
    assert [sticky.first_hrw(a) for a in range(30)] == [hashed.first_hrw(a) for a in range(30)]


@pytest.mark.parametrize("strategy", NEW)
def test_new_baselines_serve_every_chat_request(strategy: str) -> None:
    shape = Shape(workers=4, adapters=30, max_loras=2, requests=1200, rps_per_worker=4.0)
    requests = SCENARIOS["chat"](np.random.default_rng(8), shape, Lengths())
    metrics, outcome = run_strategy(strategy, requests, names(30), Setup(workers=4, max_loras=2), 8)
    assert metrics.requests == 1200 and set(np.unique(outcome.worker)) == set(range(4))
    assert metrics.prefix_hit_rate > 0.5
    assert strategy in STRATEGIES
