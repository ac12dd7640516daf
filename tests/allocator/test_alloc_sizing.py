"""Replica counts from demand: absolute, immediate up, hysteresis down; and the estimator that feeds them."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator import estimator
from allocator.config import ReplicaPolicy
from allocator.model import Demand, ReplicaSet
from allocator.sizing import size_replicas

POLICY = ReplicaPolicy(per_replica_rps=10.0, per_replica_concurrent=None, scale_down_cooldown_s=30.0)
TICK = 2.0


def run_ticks(rates: list[float], policy: ReplicaPolicy = POLICY, candidates: int = 100,
              rise_tau_s: float = 0.0, fall_tau_s: float = 30.0) -> list[int]:
    """Feed measured rates through the estimator and sizing, tick by tick, like the leader does."""
    state, previous, out = Demand(), None, []
    for tick, rate in enumerate(rates):
        state = estimator.update(state, rate * TICK, 0.0, TICK, rise_tau_s, fall_tau_s)
        sizes = size_replicas([policy], [state], [previous], [candidates], now=tick * TICK)
        previous = ReplicaSet(workers=(), replicas=sizes.replicas[0], resized_at=sizes.resized_at[0])
        out.append(previous.replicas)
    return out


def test_sizing_is_absolute_not_a_share_of_the_total() -> None:
    sizes = size_replicas([POLICY, POLICY], [Demand(rps=0.5), Demand(rps=35.0)], [None, None], [8, 8], 0.0)
    assert sizes.replicas == [1, 4]
    alone = size_replicas([POLICY], [Demand(rps=0.5)], [None], [8], 0.0)
    assert alone.replicas == [1]


def test_the_larger_of_rate_and_concurrency_wins() -> None:
    policy = ReplicaPolicy(per_replica_rps=10.0, per_replica_concurrent=4.0)
    sizes = size_replicas([policy] * 2, [Demand(rps=5.0, inflight=13.0), Demand(rps=31.0, inflight=1.0)],
                          [None, None], [100, 100], 0.0)
    assert sizes.replicas == [4, 4]


def test_clamped_by_min_max_and_candidates() -> None:
    policy = ReplicaPolicy(per_replica_rps=1.0, min_replicas=2, max_replicas=6)
    sizes = size_replicas([policy] * 4, [Demand(), Demand(rps=100), Demand(rps=100), Demand(rps=100)],
                          [None] * 4, [10, 10, 3, 0], 0.0)
    assert sizes.replicas == [2, 6, 3, 1]  # no candidate: still asked for one, reported unplaced


def test_min_replicas_zero_means_none_when_idle() -> None:
    policy = ReplicaPolicy(min_replicas=0)
    assert size_replicas([policy], [Demand()], [None], [5], 0.0).replicas == [0]
    assert size_replicas([policy], [Demand(rps=0.2)], [None], [5], 0.0).replicas == [1]


@pytest.mark.parametrize("shape", ["step", "ramp", "spike"])
def test_scale_up_happens_on_the_tick_demand_rises(shape: str) -> None:
    rates = {"step": [5.0] * 5 + [95.0] * 5,
             "ramp": [5.0 + 10.0 * t for t in range(10)],
             "spike": [5.0] * 5 + [200.0] + [5.0] * 4}[shape]
    replicas = run_ticks(rates)
    for tick, rate in enumerate(rates):
        assert replicas[tick] >= math.ceil(rate / 10.0), (shape, tick, replicas)


def test_scale_down_waits_for_the_cooldown_and_the_lower_threshold() -> None:
    policy = ReplicaPolicy(per_replica_rps=10.0, per_replica_concurrent=None, scale_down_cooldown_s=10.0)
    up = size_replicas([policy], [Demand(rps=100.0)], [None], [100], 0.0)
    prev = ReplicaSet(workers=(), replicas=up.replicas[0], resized_at=up.resized_at[0])
    assert prev.replicas == 10
    # 70 rps needs 7 at the scale-up threshold but 12 at the 0.6 scale-down threshold: stay at 10
    assert size_replicas([policy], [Demand(rps=70.0)], [prev], [100], 100.0).replicas == [10]
    # 40 rps fits 7 replicas at 0.6 load; before the cooldown it waits, after it shrinks
    assert size_replicas([policy], [Demand(rps=40.0)], [prev], [100], 5.0).replicas == [10]
    after = size_replicas([policy], [Demand(rps=40.0)], [prev], [100], 10.0)
    assert after.replicas == [7] and after.resized_at == [10.0]


def test_state_lives_in_the_previous_placement_so_a_new_leader_continues() -> None:
    prev = ReplicaSet(workers=(), replicas=10, resized_at=50.0)
    same = size_replicas([POLICY], [Demand(rps=5.0)], [prev], [100], 60.0)
    assert same.replicas == [10] and same.resized_at == [50.0]
    later = size_replicas([POLICY], [Demand(rps=5.0)], [prev], [100], 80.0)
    assert later.replicas == [1] and later.resized_at == [80.0]


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.floats(min_value=1.0, max_value=500.0))
def test_twenty_percent_noise_never_flaps(seed: int, mean: float) -> None:
    rng = np.random.default_rng(seed)
    rates = (mean * rng.uniform(0.8, 1.2, 200)).tolist()
    replicas = run_ticks(rates)
    assert all(b >= a for a, b in itertools.pairwise(replicas)), replicas  # never back down
    assert replicas[-1] <= math.ceil(1.2 * mean / 10.0)  # and no further than the noise's top needs


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.floats(min_value=1.0, max_value=500.0))
def test_twenty_percent_noise_without_smoothing_never_flaps(seed: int, mean: float) -> None:
    rng = np.random.default_rng(seed)
    previous, seen = None, []
    for tick in range(200):
        demand = Demand(rps=float(mean * rng.uniform(0.8, 1.2)))
        sizes = size_replicas([POLICY], [demand], [previous], [1000], now=tick * TICK)
        previous = ReplicaSet(workers=(), replicas=sizes.replicas[0], resized_at=sizes.resized_at[0])
        seen.append(previous.replicas)
    assert all(b >= a for a, b in itertools.pairwise(seen)), seen


def test_estimator_follows_a_rise_at_once_and_fades_slowly() -> None:
    state = estimator.update(Demand(), arrivals=200, inflight=8, dt=2.0, rise_tau_s=0.0, fall_tau_s=30.0)
    assert state == Demand(rps=100.0, inflight=8.0)
    fallen = estimator.update(state, arrivals=0, inflight=0, dt=2.0, rise_tau_s=0.0, fall_tau_s=30.0)
    assert fallen.rps == pytest.approx(100.0 * math.exp(-2.0 / 30.0))
    smooth_rise = estimator.update(Demand(), arrivals=200, inflight=0, dt=2.0, rise_tau_s=2.0, fall_tau_s=30.0)
    assert smooth_rise.rps == pytest.approx(100.0 * (1 - math.exp(-1.0)))


def test_estimator_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match="dt must be > 0"):
        estimator.update(Demand(), 1, 0, 0.0, 0.0, 30.0)


def test_update_all_adds_new_adapters_and_forgets_idle_ones() -> None:
    states = {"old": Demand(rps=0.0005), "busy": Demand(rps=10.0)}
    out = estimator.update_all(states, {"new": 4}, {"busy": 2}, 2.0, 0.0, 30.0)
    assert set(out) == {"busy", "new"}
    assert out["new"].rps == 2.0 and out["busy"].inflight == 2.0
