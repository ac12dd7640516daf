"""Re-plans by a warm Planner: what it caches and the shortcuts it takes give exactly the placement
a fresh computation gives, byte for byte as written to etcd.

A warm Planner keeps, while its inputs stay the same, the sorted catalog, the demand and previous
placement as columns, the policies and the rankings as arrays; it decides most adapters at once
and hands back an unchanged replica set as the previous set itself. `compute_placement` builds
all of it anew each call, so comparing the two after every step of a long sequence checks every
cache against what it stands for; and each shortcut is checked against the plain rule it replaces
(the keep rule taken one adapter at a time, every release judged at its turn, no set handed back).
"""

from __future__ import annotations

import math
import random
import types
from typing import Any

import msgspec
import pytest
from alloc_helpers import joined_or_left

from allocator import placement as placement_module
from allocator import synthetic
from allocator.config import PolicyOverride, ReplicaConfig, ReplicaPolicy
from allocator.hrw import rank_workers
from allocator.model import Adapter, Demand, Placement, ReplicaSet, Worker
from allocator.placement import Planner, compute_placement


def _same(warm: Placement, *args: Any) -> None:
    fresh = compute_placement(*args)
    assert warm == fresh
    assert msgspec.json.encode(warm) == msgspec.json.encode(fresh)  # 0.0 is not -0.0, nor 1 1.0, in JSON
    assert list(warm.replica_sets) == list(fresh.replica_sets)


def _config(rng: random.Random) -> ReplicaConfig:
    overrides = {"a1*": PolicyOverride(min_replicas=0), "a2": PolicyOverride(min_replicas=2, max_replicas=3)}
    return ReplicaConfig(sticky=rng.random() < 0.8, sticky_k=rng.choice([0, 1, 2, 4]),
                         epsilon=rng.choice([0.1, 0.25]), adapters=overrides if rng.random() < 0.5 else {},
                         defaults=ReplicaPolicy(per_replica_rps=rng.choice([2.0, 5.0]),
                                                scale_down_cooldown_s=rng.choice([0.0, 3.0])))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("depth", [3, 32])
def test_warm_planner_equals_a_fresh_one_through_a_long_sequence(seed: int, depth: int) -> None:
    """Joins, leaves, changed workers, catalog and config edits; demand kept (the same objects),
    redrawn or changed in place; the previous placement the last one, the first one (as the
    benchmark re-plans) or none; slots short enough that holders lose theirs."""
    rng = random.Random(seed)
    pool = [Worker(id=f"w{i}", base_model=rng.choice(["m", "m", "n"]), slots=rng.choice([0, 3, 6, 30]),
                   weight=rng.choice([1.0, 1.0, 2.0]), max_lora_rank=rng.choice([16, 64])) for i in range(40)]
    catalog = [Adapter(name=f"a{i}", base_model=rng.choice(["m", "m", "n", "x"]), rank=rng.choice([8, 32]))
               for i in range(300)]
    workers, adapters, config = pool[:20], catalog[:220], _config(rng)
    demand = {a.name: Demand(rps=rng.expovariate(0.2)) for a in catalog}
    planner, previous, first = Planner(depth=depth), None, None
    for step in range(16):
        now = float(step)
        placement = planner.place(workers, adapters, demand, config, previous, now)
        _same(placement, workers, adapters, demand, config, previous, now)
        first = first or placement
        previous = rng.choice([placement, placement, first, None])
        change = rng.choice(["join", "leave", "worker", "catalog", "config", "demand", "in place", "same"])
        moved = joined_or_left(rng, change, workers, pool, keep=2)
        if moved is not None:
            workers = moved
        elif change == "worker":
            i = rng.randrange(len(workers))
            edited = msgspec.structs.replace(workers[i], slots=rng.choice([1, 8]), weight=rng.choice([1.0, 3.0]))
            workers = [*workers[:i], edited, *workers[i + 1:]]
        elif change == "catalog":
            adapters = rng.sample(catalog, rng.randint(150, 300))
        elif change == "config":
            config = _config(rng)
        elif change == "demand":
            demand = {a.name: Demand(rps=rng.expovariate(rng.choice([0.05, 0.5]))) for a in catalog}
        elif change == "in place":  # the same dict and list objects, other contents
            for name in rng.sample(list(demand), 20):
                demand[name] = Demand(rps=rng.choice([0.0, -0.0, 4, 60.0]))
            adapters.append(Adapter(name=f"new{step}", base_model="m"))


def test_a_join_and_a_leave_replan_like_the_benchmark() -> None:
    """The benchmark's re-plans (one worker joins or leaves, each from the same first placement)
    on a fleet where hot adapters hold many workers and others sit past their top t + k."""
    workers, adapters = synthetic.workers(60, 24), synthetic.adapters(3000)
    demand = synthetic.zipf_demand(3000, 1.0, 20.0 * 60)
    config = ReplicaConfig()
    planner = Planner(depth=8)
    base = planner.place(workers, adapters, demand, config, None, 0.0)
    joined = workers + synthetic.workers(1, 24, start=60)
    left = [w for w in workers if w.id != "w30"]
    for after in (joined, workers, left, workers, joined):
        placement = planner.place(after, adapters, demand, config, base, 2.0)
        _same(placement, after, adapters, demand, config, base, 2.0)
    assert any(len(rs.workers) > 8 for rs in base.replica_sets.values())  # past the prefix: full rankings


def test_unchanged_sets_are_the_previous_objects() -> None:
    workers, adapters = synthetic.workers(30, 32), synthetic.adapters(1000)
    demand = synthetic.zipf_demand(1000, 1.0, 600.0)
    planner = Planner()
    before = planner.place(workers, adapters, demand, ReplicaConfig(), None, 0.0)
    joined = workers + synthetic.workers(1, 32, start=30)
    after = planner.place(joined, adapters, demand, ReplicaConfig(), before, 1.0)
    equal = [name for name, rs in after.replica_sets.items() if rs == before.replica_sets[name]]
    assert len(equal) > 900
    assert all(after.replica_sets[name] is before.replica_sets[name] for name in equal)
    _same(after, joined, adapters, demand, ReplicaConfig(), before, 1.0)


def test_a_previous_set_of_looser_types_is_not_handed_back() -> None:
    """A previous placement made by hand (a list of workers, an int time) equals a proper one
    but does not encode as one: the new placement is built of proper sets."""
    workers, adapters = synthetic.workers(6, 8), synthetic.adapters(20)
    demand = synthetic.zipf_demand(20, 1.0, 30.0)
    proper = compute_placement(workers, adapters, demand, ReplicaConfig(), None, 0.0)
    loose = Placement(epoch=1, replica_sets={
        name: ReplicaSet(workers=list(rs.workers), replicas=rs.replicas, resized_at=int(rs.resized_at),  # type: ignore[arg-type]
                         demand_rps=rs.demand_rps) for name, rs in proper.replica_sets.items()})
    placement = Planner().place(workers, adapters, demand, ReplicaConfig(), loose, 1.0)
    for rs in placement.replica_sets.values():
        assert type(rs.workers) is tuple and type(rs.resized_at) is float
    assert msgspec.json.encode(placement.replica_sets) == msgspec.json.encode(
        compute_placement(workers, adapters, demand, ReplicaConfig(), proper, 1.0).replica_sets)


def test_a_set_that_keeps_one_of_its_holders_is_new() -> None:
    """A set listing more workers than it asks for (made by hand, or by an older leader) keeps its
    best-ranked one: the same count, time and demand, but not the same set."""
    workers, adapters = synthetic.workers(8, 8), synthetic.adapters(12)
    demand = synthetic.zipf_demand(12, 1.0, 10.0)
    proper = compute_placement(workers, adapters, demand, ReplicaConfig(), None, 0.0)
    rs = proper.replica_sets["a5"]
    assert rs.replicas == 1
    extra = rank_workers("a5", workers)[-1].id  # ranked below the holder, so the holder is the one kept
    assert extra not in rs.workers
    previous = msgspec.structs.replace(proper, replica_sets=proper.replica_sets | {
        "a5": msgspec.structs.replace(rs, workers=(*rs.workers, extra))})
    placement = Planner().place(workers, adapters, demand, ReplicaConfig(), previous, 1.0)
    assert placement.replica_sets["a5"] == rs


def test_equal_demand_of_other_objects_is_read_anew() -> None:
    """-0.0 == 0.0 and 4 == 4.0, but a placement records the demand as given."""
    workers, adapters = synthetic.workers(4, 8), synthetic.adapters(3)
    planner, config = Planner(), ReplicaConfig()
    first = planner.place(workers, adapters, {"a0": Demand(rps=0.0), "a1": Demand(rps=4.0)}, config, None, 0.0)
    second = planner.place(workers, adapters, {"a0": Demand(rps=-0.0), "a1": Demand(rps=4)}, config, first, 1.0)
    assert math.copysign(1.0, second.replica_sets["a0"].demand_rps) == -1.0
    assert type(second.replica_sets["a1"].demand_rps) is int
    mapping = types.MappingProxyType({"a0": Demand(rps=-0.0), "a1": Demand(rps=4.0)})  # not a dict: read anew
    third = planner.place(workers, adapters, mapping, config, second, 2.0)
    _same(third, workers, adapters, mapping, config, second, 2.0)


def _sticky_one_at_a_time(self: Any, previous: Any, kept: Any) -> set[int]:
    """The keep rule as written, one adapter at a time, coldest first, loads added as it goes: the
    oracle for the vectorised `_Walk._sticky`."""
    names, targets, rps, k, rankings = self.names, self.targets, self.rps, self.config.sticky_k, self.rankings
    used, load, slots, positions = self.used, self.load, self.slots, self.positions
    fresh = {i for wid, i in positions.items() if wid not in previous.holders and slots[i] > 0}
    offers, beyond = [], set()
    for i in reversed(self.hottest.tolist()):
        rs, t = previous.sets[i], targets[i]
        if not t or rs is None or not rs.workers:
            continue
        if t >= rankings.candidates(names[i]):
            candidates = list(enumerate(self._window(names[i], t)))
        else:
            ranking = rankings.full(names[i])
            candidates = sorted((ranking.index(w), w) for w in map(positions.get, rs.workers) if w in ranking)
        picked = []
        for pos, w in candidates:
            if len(picked) >= t:
                break
            if used[w] < slots[w]:
                used[w] += 1
                load[w] += rps[i] / t
                picked.append((pos, w))
        kept.lists[i] = picked
        if any(pos >= t + k for pos, _ in picked):
            beyond.add(i)
        elif fresh and len(picked) == t and not fresh.isdisjoint(self._window(names[i], t + k)):
            offers.append(i)
    self._rebound(kept, offers[::-1], fresh)
    return beyond


def _no_reuse(init: Any) -> Any:
    def without(self: Any, *args: Any) -> None:
        init(self, *args)
        self.reusable[:] = False
    return without


ORACLES = {
    "keep rule one adapter at a time": ("_Walk", "_sticky", _sticky_one_at_a_time),
    "every release judged at its turn": ("_Walk", "_staying", lambda self, kept, beyond: set()),
    "no previous set handed back": ("_Previous", "__init__", _no_reuse(placement_module._Previous.__init__)),
}


def _replans(fleet: str) -> list[tuple[Any, ...]]:
    """A chained sequence of re-plan inputs (each previous: the placement before it)."""
    if fleet == "benchmark":  # one joins, one leaves: some holders past their top t + k are let go
        workers, adapters = synthetic.workers(100, 32), synthetic.adapters(5000)
        demand = synthetic.zipf_demand(5000, 1.0, 2000.0)
        steps = [workers, workers + synthetic.workers(1, 32, start=100), workers,
                 [w for w in workers if w.id != "w50"], workers]
        return [(ws, adapters, demand, ReplicaConfig(), 2.0 * bool(step)) for step, ws in enumerate(steps)]
    if fleet == "one candidate":  # of two workers of a large LoRA rank, one leaves: the other is all there is
        workers, catalog = synthetic.workers(12, 40), synthetic.adapters(250)
        catalog += [Adapter(name=f"large{i}", base_model=synthetic.BASE_MODEL, rank=128) for i in range(50)]
        demand = synthetic.zipf_demand(250, 1.0, 120.0) | {f"large{i}": Demand(rps=1.0 + i % 3) for i in range(50)}
        large = [Worker(id=f"r{i}", base_model=synthetic.BASE_MODEL, slots=60, max_lora_rank=128) for i in range(2)]
        steps = [large, large[1:], large, large[:1]]
        return [([*workers, *ws], catalog, demand, ReplicaConfig(), float(step)) for step, ws in enumerate(steps)]
    # mixed weights, slots taken away, negative and shifting demand
    rng = random.Random(fleet)
    pool = [Worker(id=f"w{i}", base_model=rng.choice(["m", "m", "n"]), slots=rng.choice([3, 6, 30]),
                   weight=rng.choice([1.0, 2.0]), max_lora_rank=rng.choice([16, 32])) for i in range(30)]
    catalog = [Adapter(name=f"a{i}", base_model=rng.choice(["m", "n"]), rank=rng.choice([8, 32]))
               for i in range(200)]
    config = ReplicaConfig(defaults=ReplicaPolicy(per_replica_rps=5.0, scale_down_cooldown_s=0.0))
    out = []
    for step in range(10):
        workers = rng.sample(pool, rng.randint(16, 22))
        workers = [msgspec.structs.replace(w, slots=1) if rng.random() < 0.2 else w for w in workers]
        if step % 2 == 0:  # kept (the same objects) every other step: unchanged sets are handed back
            demand = {a.name: Demand(rps=rng.expovariate(rng.choice([0.1, 0.5, 2.0])) * rng.choice([1.0, 1.0, -0.1]))
                      for a in catalog}
        out.append((workers, catalog, demand, config, float(step)))
    return out


@pytest.mark.parametrize("fleet", ["benchmark", "one candidate", "mixed-1", "mixed-2"])
@pytest.mark.parametrize("oracle", ORACLES)
def test_vectorised_steps_equal_their_plain_versions(monkeypatch: pytest.MonkeyPatch, fleet: str,
                                                     oracle: str) -> None:
    """Each shortcut against the plain rule it stands for, through a chain of re-plans: the same
    placements, and the same slot and load counters, to the last bit, when the bound is applied."""
    rebound = placement_module._Walk._rebound

    def chain() -> tuple[list[bytes], list[tuple[list[int], list[float]]]]:
        counters: list[tuple[list[int], list[float]]] = []

        def counted(self: Any, *args: Any) -> None:
            if any(self.used):  # (with nothing kept, the vectorised pass skips the bound: nothing is over)
                counters.append((list(self.used), list(self.load)))
            rebound(self, *args)
        with monkeypatch.context() as patch:
            patch.setattr(placement_module._Walk, "_rebound", counted)
            planner, previous, out = Planner(depth=6), None, []
            for workers, adapters, demand, config, now in _replans(fleet):
                previous = planner.place(workers, adapters, demand, config, previous, now)
                out.append(msgspec.json.encode(previous))
        return out, counters
    expected = chain()
    owner, name, plain = ORACLES[oracle]
    monkeypatch.setattr(getattr(placement_module, owner), name, plain)
    assert chain() == expected
