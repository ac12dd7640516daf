"""Sticky re-plans after a worker joins or leaves: the bound holds, and little more than needed moves.

The fleet of the benchmark's sticky study (`lora-bench allocator`): 1,000 adapters on 32 workers,
Zipf(1.0) demand of 1,000 rps measured as Poisson counts over 60 s, a regime where the bound binds.
Each seed draws the demand and which worker joins or leaves; before and after see the same demand,
so what moves is the event's doing.
"""

from __future__ import annotations

import numpy as np
import pytest

from allocator import synthetic
from allocator.config import ReplicaConfig
from allocator.measure import assignments, expected_loads, fair_share, imbalance, moved
from allocator.model import Demand, Placement, Worker
from allocator.placement import compute_placement

DEFAULT = ReplicaConfig()
SEEDS = range(8)
N_WORKERS, N_ADAPTERS, SLOTS, TOTAL_RPS = 32, 1000, 64, 1000.0


def _before(seed: int) -> tuple[list[Worker], dict[str, Demand], Placement]:
    workers = synthetic.workers(N_WORKERS, SLOTS)
    demand = synthetic.zipf_demand(N_ADAPTERS, 1.0, TOTAL_RPS, np.random.default_rng(seed))
    return workers, demand, compute_placement(workers, synthetic.adapters(N_ADAPTERS), demand, DEFAULT, None, 0.0)


def _joined(seed: int) -> tuple[Placement, list[Worker], Placement]:
    workers, demand, before = _before(seed)
    joined = workers + synthetic.workers(1, SLOTS, start=N_WORKERS + seed)  # a different newcomer per seed
    return before, joined, compute_placement(joined, synthetic.adapters(N_ADAPTERS), demand, DEFAULT, before, 1.0)


def _over_bound(placement: Placement, workers: list[Worker], epsilon: float) -> dict[str, float]:
    """Workers whose expected load exceeds (1 + epsilon) x mean x weight, with their load / that bound."""
    loads = expected_loads(placement, workers)
    mean = sum(loads.values()) / sum(w.weight for w in workers)
    limit = {w.id: (1 + epsilon) * mean * w.weight * (1 + 1e-9) + 1e-9 for w in workers}
    return {w: loads[w] / limit[w] for w in limit if loads[w] > limit[w]}


@pytest.mark.parametrize("seed", SEEDS)
def test_no_worker_over_the_bound_after_a_join(seed: int) -> None:
    _, joined, after = _joined(seed)
    assert _over_bound(after, joined, DEFAULT.epsilon) == {}
    assert imbalance(expected_loads(after, joined), joined) <= 1 + DEFAULT.epsilon + 1e-9


def test_no_worker_over_the_bound_when_a_heavier_worker_joins() -> None:
    """A newcomer of weight 2 lowers the mean by two workers' worth: the old ones must shed."""
    for seed in SEEDS[:4]:
        workers, demand, before = _before(seed)
        joined = [*workers, Worker(id=f"big{seed}", base_model=synthetic.BASE_MODEL, slots=SLOTS, weight=2.0)]
        after = compute_placement(joined, synthetic.adapters(N_ADAPTERS), demand, DEFAULT, before, 1.0)
        assert _over_bound(after, joined, DEFAULT.epsilon) == {}


def test_join_churn_stays_near_the_fair_share() -> None:
    """New assignments over what the newcomer should receive (assignments / workers after)."""
    ratios = []
    for seed in SEEDS:
        before, joined, after = _joined(seed)
        ratios.append(moved(before, after) / fair_share(after, joined))
    assert np.mean(ratios) <= 1.05, ratios
    assert max(ratios) <= 1.10, ratios


def test_a_leave_moves_only_what_the_leaving_worker_held() -> None:
    ratios = []
    for seed in SEEDS:
        workers, demand, before = _before(seed)
        gone = workers[(7 * seed + 16) % N_WORKERS].id
        left = [w for w in workers if w.id != gone]
        after = compute_placement(left, synthetic.adapters(N_ADAPTERS), demand, DEFAULT, before, 1.0)
        assert _over_bound(after, left, DEFAULT.epsilon) == {}
        held = sum(1 for _, w in assignments(before) if w == gone)
        ratios.append(moved(before, after) / held)
    assert np.mean(ratios) <= 1.05, ratios


def test_the_placement_after_a_join_is_stable() -> None:
    """Planning the same input again moves nothing: what a join settled stays settled."""
    for seed in SEEDS[:4]:
        _, demand, _ = _before(seed)
        _, joined, after = _joined(seed)
        again = compute_placement(joined, synthetic.adapters(N_ADAPTERS), demand, DEFAULT, after, 2.0)
        assert moved(after, again) == 0
        assert again.replica_sets == after.replica_sets


def test_demand_shift_sheds_to_the_bound_with_few_moves() -> None:
    """Redrawn demand (no membership change) pushes some workers over: they come back within it."""
    for seed in SEEDS[:4]:
        workers, _, before = _before(seed)
        shifted = synthetic.zipf_demand(N_ADAPTERS, 1.0, TOTAL_RPS, np.random.default_rng(1000 + seed))
        after = compute_placement(workers, synthetic.adapters(N_ADAPTERS), shifted, DEFAULT, before, 1.0)
        assert _over_bound(after, workers, DEFAULT.epsilon) == {}
        assert moved(before, after) <= 0.5 * fair_share(after, workers)
