"""Capacity-bounded HRW placement: which workers should hold which adapter.

How: size every adapter from its demand (sizing.py); if a base model's slots
cannot hold every replica asked for, the hottest adapters keep theirs and the
coldest shrink (to nothing, if need be); they are reported unplaced.
Then place adapters hottest first; each walks its OWN HRW ranking and takes
workers that have a free slot and whose expected load stays within
(1 + epsilon) x the fleet mean per unit weight (bounded loads without the
cascades of a ring, since an overflow goes to that adapter's next choice,
not to a shared neighbour). An adapter's expected load is split evenly over
its replicas. In sticky mode an adapter first keeps its current workers that
are still in its top replicas + sticky_k and within bounds. If nothing within
bounds is left, the least loaded worker with a free slot takes the replica.

`Planner` keeps rankings between calls (membership changes cost a few
thousand hashes); `compute_placement` is the same function without memory.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from allocator.config import ReplicaConfig, ReplicaPolicy, policy_for
from allocator.model import Adapter, Demand, Placement, ReplicaSet, Worker
from allocator.rankings import Rankings
from allocator.sizing import size_replicas

NO_DEMAND = Demand()
_TOLERANCE = 1e-9


class DuplicateName(ValueError):
    """Two workers with one id, or two adapters with one name: placement would be ambiguous."""


def _unique(names: list[str], what: str) -> None:
    dup = next((a for a, b in itertools.pairwise(names) if a == b), None)
    if dup is not None:
        raise DuplicateName(f"{what} {dup!r} appears twice")


def fit_to_slots(base_models: Sequence[str], asked: Sequence[int], hottest_first: Sequence[int],
                 slots: Mapping[str, int]) -> list[int]:
    """Replica counts that fit each base model's slots: the hottest keep theirs, the coldest shrink.

    Why this way round: a hot adapter squeezed onto fewer workers overloads
    them for every one of its many requests, while a cold adapter left out is
    loaded on demand by the cold-start path for its rare ones.
    """
    need: dict[str, int] = {}
    for base, n in zip(base_models, asked, strict=True):
        need[base] = need.get(base, 0) + n
    if all(n <= slots.get(base, 0) for base, n in need.items()):
        return list(asked)
    left = dict(slots)
    target = [0] * len(asked)
    for i in hottest_first:
        base = base_models[i]
        target[i] = min(asked[i], left.get(base, 0))
        if target[i]:
            left[base] -= target[i]
    return target


def _pool_slots(workers: Sequence[Worker]) -> dict[str, int]:
    slots: dict[str, int] = {}
    for w in workers:
        slots[w.base_model] = slots.get(w.base_model, 0) + w.slots
    return slots


class Planner:
    """Computes placements, caching HRW rankings and policies between calls."""

    def __init__(self, depth: int = 32) -> None:
        self.rankings = Rankings(depth)
        self._policy_config: ReplicaConfig | None = None
        self._policies: dict[str, ReplicaPolicy] = {}

    def _policy(self, config: ReplicaConfig, name: str) -> ReplicaPolicy:
        if config != self._policy_config:
            self._policy_config, self._policies = config, {}
        policy = self._policies.get(name)
        if policy is None:
            policy = self._policies[name] = policy_for(config, name)
        return policy

    def place(self, workers: Sequence[Worker], adapters: Sequence[Adapter],
              demand: Mapping[str, Demand], config: ReplicaConfig,
              previous: Placement | None, now: float) -> Placement:
        workers = sorted(workers, key=lambda w: w.id)
        adapters = sorted(adapters, key=lambda a: a.name)
        _unique([w.id for w in workers], "worker")
        _unique([a.name for a in adapters], "adapter")
        rankings = self.rankings
        rankings.sync(workers, adapters)

        demands = [demand.get(a.name, NO_DEMAND) for a in adapters]
        prev_sets = previous.replica_sets if previous is not None else {}
        previous_sets = [prev_sets.get(a.name) for a in adapters]
        candidates = {key: rankings.candidates(a.name)
                      for key, a in {(a.base_model, a.rank): a for a in adapters}.items()}
        sizes = size_replicas([self._policy(config, a.name) for a in adapters], demands, previous_sets,
                              [candidates[(a.base_model, a.rank)] for a in adapters], now)
        rps = np.fromiter((d.rps for d in demands), dtype=np.float64, count=len(demands))
        inflight = np.fromiter((d.inflight for d in demands), dtype=np.float64, count=len(demands))
        hottest = np.lexsort((np.arange(len(adapters)), -inflight, -rps)).tolist()  # names are sorted
        targets = fit_to_slots([a.base_model for a in adapters], sizes.replicas, hottest,
                               _pool_slots(workers))

        chosen = _Walk(rankings, workers, adapters, demands, targets, config).run(hottest, previous_sets)
        replica_sets = {
            a.name: ReplicaSet(workers=chosen[i], replicas=sizes.replicas[i],
                               resized_at=sizes.resized_at[i], demand_rps=demands[i].rps)
            for i, a in enumerate(adapters)}
        unplaced = tuple(a.name for i, a in enumerate(adapters) if len(chosen[i]) < sizes.replicas[i])
        return Placement(epoch=(previous.epoch + 1) if previous is not None else 1, computed_at=now,
                         replica_sets=replica_sets, unplaced=unplaced)


class _Walk:
    """The greedy pass: mutable per-worker slot and load counters over the ranking index space."""

    def __init__(self, rankings: Rankings, workers: Sequence[Worker], adapters: Sequence[Adapter],
                 demands: Sequence[Demand], targets: Sequence[int], config: ReplicaConfig) -> None:
        self.rankings = rankings
        self.rows = rankings.rows
        self.positions = rankings.positions
        self.adapters = adapters
        self.demands = demands
        self.targets = targets
        self.config = config
        size = len(rankings.workers)
        self.used = [0] * size
        self.load = [0.0] * size
        self.slots = [0] * size
        self.weight = [1.0] * size
        self.bound = [0.0] * size
        self.keep_bound = [0.0] * size
        pool_size: dict[str, int] = {}
        pool_rps: dict[str, float] = {}
        pool_weight: dict[str, float] = {}
        for a, d, t in zip(adapters, demands, targets, strict=True):
            if t:
                pool_rps[a.base_model] = pool_rps.get(a.base_model, 0.0) + d.rps
        for w in workers:
            pool_weight[w.base_model] = pool_weight.get(w.base_model, 0.0) + w.weight
            pool_size[w.base_model] = pool_size.get(w.base_model, 0) + 1
        for w in workers:
            i = rankings.position(w.id)
            self.slots[i], self.weight[i] = w.slots, w.weight
            mean = pool_rps.get(w.base_model, 0.0) / pool_weight[w.base_model]
            self.bound[i] = (1.0 + config.epsilon) * mean * w.weight * (1 + _TOLERANCE) + _TOLERANCE
            self.keep_bound[i] = self.bound[i] * (1.0 + 1.0 / pool_size[w.base_model])

    def run(self, hottest: Sequence[int],
            previous: Sequence[ReplicaSet | None]) -> list[tuple[str, ...]]:
        """Each adapter's chosen worker ids, best ranked first."""
        names = [a.name for a in self.adapters]
        kept: list[list[tuple[int, int]] | None] = [None] * len(names)
        if self.config.sticky:
            seen = {w for rs in previous if rs is not None for w in rs.workers}
            fresh = {i for wid, i in self.positions.items() if wid not in seen and self.slots[i] > 0}
            k, keep, targets, demands = self.config.sticky_k, self._keep, self.targets, self.demands
            used, load, slots, bound, rows, positions = (self.used, self.load, self.slots, self.keep_bound,
                                                         self.rows, self.positions)
            for i in reversed(hottest):
                prev, t = previous[i], targets[i]
                if not t or prev is None or not prev.workers:
                    continue
                row = rows[names[i]]
                if t == 1 and len(prev.workers) == 1 and (row.complete or len(row.idx) > k):
                    # the common case, inlined for speed: the same rule as _keep with t = 1
                    top, w = row.idx[:k + 1], positions.get(prev.workers[0])
                    kept[i] = []
                    if w in top and not (fresh and top[0] in fresh):
                        item = demands[i].rps
                        if used[w] < slots[w] and load[w] + item <= bound[w]:
                            used[w] += 1
                            load[w] += item
                            kept[i] = [(top.index(w), w)]
                else:
                    kept[i] = keep(names[i], t, demands[i].rps / t, prev.workers, t + k, fresh)
        chosen: list[tuple[str, ...]] = [()] * len(names)
        fill, targets, demands, ids = self._fill, self.targets, self.demands, self.rankings.ids
        for i in hottest:
            t = targets[i]
            if t:
                picked = kept[i]
                if picked is not None and len(picked) == t:
                    chosen[i] = (ids[picked[0][1]],) if t == 1 else tuple([ids[w] for _, w in picked])
                else:
                    chosen[i] = fill(names[i], t, demands[i].rps, picked or [])
        return chosen

    def _keep(self, name: str, t: int, item: float, held: tuple[str, ...], window: int,
              fresh: set[int]) -> list[tuple[int, int]]:
        """Sticky pass, coldest adapters first: keep current workers in the top t + k within bounds.

        Why coldest first: when a worker is over its bound (the mean fell because
        a worker joined, or demand shifted), the hottest adapters are the ones that
        give it up, so the fewest assignments move to bring it back under. Why
        `fresh`: a worker that held nothing (it just joined) and ranks in the top
        t takes its place as plain HRW would give it, so it gets its share at once.
        """
        used, load, slots, bound = self.used, self.load, self.slots, self.keep_bound
        row = self.rows[name]
        ranking = row.idx if row.complete or len(row.idx) >= window else self.rankings.full(name)
        room = t - len(fresh.intersection(ranking[:t])) if fresh else t
        top = ranking[:window]
        positions = self.positions
        candidates = [(top.index(w), w) for w in map(positions.get, held) if w in top]
        if len(candidates) > 1:
            candidates.sort()
        picked: list[tuple[int, int]] = []
        for pos, w in candidates:
            if len(picked) >= room:
                break
            if used[w] < slots[w] and load[w] + item <= bound[w]:
                used[w] += 1
                load[w] += item
                picked.append((pos, w))
        return picked

    def _fill(self, name: str, t: int, rps: float, picked: list[tuple[int, int]]) -> tuple[str, ...]:
        """Walk the adapter's ranking for the replicas still missing, then the least loaded."""
        used, load, slots, bound, weight = self.used, self.load, self.slots, self.bound, self.weight
        item = rps / t
        taken = {w for _, w in picked}
        row = self.rows[name]
        ranking, start = row.idx, 0
        while len(picked) < t:
            for pos in range(start, len(ranking)):
                w = ranking[pos]
                if w not in taken and used[w] < slots[w] and load[w] + item <= bound[w]:
                    used[w] += 1
                    load[w] += item
                    picked.append((pos, w))
                    taken.add(w)
                    if len(picked) == t:
                        break
            if len(picked) == t or row.complete or ranking is not row.idx:
                break
            ranking, start = self.rankings.full(name), len(ranking)
        while len(picked) < t:
            free = [((load[w] + item) / weight[w], pos, w) for pos, w in enumerate(self.rankings.full(name))
                    if w not in taken and used[w] < slots[w]]
            if not free:
                break
            _, pos, w = min(free)
            picked.append((pos, w))
            taken.add(w)
            used[w] += 1
            load[w] += item
        if 0 < len(picked) < t:
            extra = rps / len(picked) - item
            for _, w in picked:
                load[w] += extra
        return tuple([self.rankings.ids[w] for _, w in sorted(picked)])


def compute_placement(workers: Sequence[Worker], adapters: Sequence[Adapter],
                      demand: Mapping[str, Demand], config: ReplicaConfig,
                      previous: Placement | None, now: float) -> Placement:
    """The desired placement for this tick: a pure function of its arguments (epoch = previous + 1)."""
    return Planner().place(workers, adapters, demand, config, previous, now)
