"""The clairvoyant lower bounds: Belady's MIN against brute force, the prefill arithmetic by hand, and no
strategy beating them on a chat and a Zipf run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from bench.cli import main
from bench.perfmodel import PerfParams
from bench.sim.bound import _runs, adapter_reads, belady_misses, compute, next_uses, prefilled_tokens
from bench.sim.fleet import SimFleet
from bench.sim.scenarios import SCENARIOS, Setup, Shape, names, run_strategy
from bench.sim.strategies import STRATEGIES, RoundRobin
from bench.workloads import Lengths, Requests


def brute_force(refs: list[int], capacity: int) -> int:
    """Fewest misses over every policy: after each reference the cache may keep any part of what it held
    plus the item just referenced (evicting anything, at any time, or bypassing the item)."""
    best: dict[frozenset[int], int] = {frozenset(): 0}
    for item in refs:
        after: dict[frozenset[int], int] = {}
        for cache, misses in best.items():
            cost = misses + (item not in cache)
            pool = sorted(cache | {item})
            for mask in range(1 << len(pool)):
                kept = frozenset(x for k, x in enumerate(pool) if mask >> k & 1)
                if len(kept) <= capacity and after.get(kept, cost + 1) > cost:
                    after[kept] = cost
        best = after
    return min(best.values())


@pytest.mark.parametrize("seed", range(40))
def test_belady_equals_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    refs = [rng.randrange(rng.randint(2, 5)) for _ in range(rng.randint(1, 11))]
    capacity = rng.randint(1, 3)
    assert belady_misses(np.array(refs), np.ones(5, dtype=np.int64), capacity) == brute_force(refs, capacity)


@pytest.mark.parametrize("seed", range(25))
def test_runs_of_units_cost_what_their_units_cost(seed: int) -> None:
    """An item of k units referenced together misses exactly as its k units, referenced one after another,
    do under brute force."""
    rng = random.Random(100 + seed)
    sizes = [rng.randint(1, 3) for _ in range(3)]
    refs = [rng.randrange(3) for _ in range(rng.randint(1, 6))]
    units = {i: [sum(sizes[:i]) + k for k in range(sizes[i])] for i in range(3)}
    capacity = rng.randint(1, 4)
    flat = [u for i in refs for u in units[i]]
    assert belady_misses(np.array(refs), np.array(sizes), capacity) == brute_force(flat, capacity)


def test_next_uses() -> None:
    assert next_uses(np.array([3, 1, 3, 3, 1, 2])).tolist() == [2, 4, 3, 6, 6, 6]


def test_blocks_referenced_alike_are_one_run_and_chains_are_checked() -> None:
    """Prompts [1, 2, 3] and [1, 2]: blocks 1 and 2 are referenced by both, 3 by one, so the sequence is
    run (1, 2), run (3), run (1, 2). A block that follows different blocks breaks that reasoning."""
    items, sizes = _runs(np.array([1, 2, 3, 1, 2]), np.array([0, 3]))
    assert items.tolist() == [0, 1, 0] and sizes.tolist() == [2, 1]
    with pytest.raises(ValueError, match="chain"):
        _runs(np.array([1, 2, 3, 2]), np.array([0, 2]))


def test_adapter_reads_are_compulsory_when_everything_fits() -> None:
    adapters = np.array([0, 1, 0, 2, 1, 0, 2], dtype=np.int32)
    assert adapter_reads(adapters, 3) == 3
    assert adapter_reads(adapters, 1) == brute_force(adapters.tolist(), 1) == 5  # 0 kept, 1 and 2 bypassed


def chat_turns(prompts: list[int], system: int = 0) -> Requests:
    n = len(prompts)
    return Requests(np.arange(n, dtype=np.float64), np.zeros(n, dtype=np.int32), np.array(prompts, dtype=np.int32),
                    np.full(n, 2, dtype=np.int32), np.zeros(n, dtype=np.int64), np.full(n, system, dtype=np.int32))


def test_prefill_bound_by_hand_and_reached_by_one_worker() -> None:
    """Two turns of one session, blocks of 16: 40 tokens (2 blocks + 8), then 64 (exactly 4 blocks).
    The 4 distinct blocks miss once each: 8 + 1 unsavable tokens + 16 x 4 misses - 1 (the exact prompt's
    last token is computed whether or not its last block is cached) = 72, what one worker prefills."""
    requests = chat_turns([40, 64])
    assert prefilled_tokens(requests, capacity=100, block_tokens=16) == 72
    fleet = SimFleet(1, names(1), PerfParams())
    outcome = fleet.run(requests, RoundRobin(fleet, 0).route)
    assert outcome.prefix_queries - outcome.prefix_hits == 72


def test_prefill_bound_with_a_small_cache_and_without_sessions() -> None:
    """Cache of 2 blocks: turn 2 (4 blocks) finds at most turn 1's 2, turn 3 (same 4 blocks) at most 2
    of its 4 kept: misses 2 + 2 + 2 = 6, unsavable 8 + 1 + 1, less one token per exact prompt that
    misses (two of them): 10 + 96 - 2 = 104."""
    assert prefilled_tokens(chat_turns([40, 64, 64]), capacity=2, block_tokens=16) == 104
    plain = Requests(np.zeros(2), np.zeros(2, dtype=np.int32), np.array([40, 64], dtype=np.int32),
                     np.ones(2, dtype=np.int32))
    assert prefilled_tokens(plain, capacity=100, block_tokens=16) == 104


@pytest.mark.parametrize("scenario", ["chat", "zipf"])
def test_no_strategy_beats_the_bound(scenario: str) -> None:
    shape = Shape(workers=4, adapters=40, max_loras=2, requests=1500, rps_per_worker=4.0)
    requests = SCENARIOS[scenario](np.random.default_rng(9), shape, Lengths())
    setup = Setup(workers=4, max_loras=2, tick_s=1.0)
    bound = compute(requests, 4, setup.params())
    assert bound.adapter_reads >= len(np.unique(requests.adapter))
    for strategy in STRATEGIES:
        _, outcome = run_strategy(strategy, requests, names(40), setup, 9)
        assert outcome.adapter_loads >= bound.adapter_reads, strategy
        assert outcome.prefix_queries - outcome.prefix_hits >= bound.prefilled_tokens, strategy


def test_the_cli_reports_the_bound_and_every_ratio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "chat.json"
    assert main(["sim", "--scenario", "chat", "--requests", "800", "--workers", "3", "--adapters", "20",
                 "--max-loras", "2", "--strategies", "cache-aware,session-hash", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    bound = doc["bound"]
    assert bound["adapter_reads"] > 0 and bound["prefilled_tokens"] > 0
    for figures in doc["results"].values():
        assert figures["prefill_over_bound"] == round(figures["prefilled_tokens"] / bound["prefilled_tokens"], 4)
        assert figures["reads_over_bound"] >= 1.0 and figures["prefill_over_bound"] >= 1.0
    text = capsys.readouterr().out
    assert f"{bound['adapter_reads']:,} adapter reads" in text and "reads/bound" in text
