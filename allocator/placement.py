"""Capacity-bounded HRW placement: which workers should hold which adapter.

How: size every adapter from its demand (sizing.py); if a base model's slots
cannot hold every replica asked for, the hottest adapters keep theirs and the
coldest shrink (to nothing, if need be); they are reported unplaced.
Then place adapters hottest first; each walks its OWN HRW ranking and takes
workers that have a free slot and whose expected load stays within
(1 + epsilon) x the fleet mean per unit weight (bounded loads without the
cascades of a ring, since an overflow goes to that adapter's next choice,
not to a shared neighbour). An adapter's expected load is split evenly over
its replicas. If nothing within bounds is left, the least loaded worker with
a free slot takes the replica.

In sticky mode an adapter first keeps its current workers that are still in
its top replicas + sticky_k (or further down, while fewer than that many
better workers could take it); then every worker over (1 + epsilon) x mean
gives up what best fits its excess, preferably to a worker that just joined,
and a joined worker takes what HRW gives it up to its share. New assignments
are placed as if one more worker had joined, so that a join rarely pushes
anyone over the bound. See `_Walk` for the why of each rule.

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
    """The greedy pass: mutable per-worker slot and load counters over the ranking index space.

    Three bounds per worker, all (1 + epsilon) x its pool's rps x its weight over a pool weight:
    `bound` over the pool as it is: no assignment is kept above it (the guarantee); `place_bound`
    over one more worker: no assignment is added above it; `recall_bound` over two more: see
    `_release`. Why place below the guarantee (sticky mode only): when a worker joins, the mean
    falls by one worker's worth and the guarantee falls onto what was placed, so nothing already
    placed has to move for the bound's sake; placing right up to the guarantee left every worker
    filled to it over by a hair after any join, and each shed a whole assignment (a join moved
    14x its fair share at 1,000 workers). The price: a fresh placement stays within
    (1 + epsilon) x n / (n + 1) of the mean, not (1 + epsilon).

    Every tie is broken by rank, adapter order or worker id, never by the internal worker index,
    so a `Planner` that kept its indices across calls decides exactly as a fresh one.
    """

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
        self.place_bound = [0.0] * size
        self.recall_bound = [0.0] * size
        self.share = [0.0] * size
        """Assignments per worker if its pool's were spread evenly by weight."""
        pool_rps: dict[str, float] = {}
        pool_count: dict[str, int] = {}
        pool_weight: dict[str, float] = {}
        pool_size: dict[str, int] = {}
        for a, d, t in zip(adapters, demands, targets, strict=True):
            if t:
                pool_rps[a.base_model] = pool_rps.get(a.base_model, 0.0) + d.rps
                pool_count[a.base_model] = pool_count.get(a.base_model, 0) + t
        for w in workers:
            pool_weight[w.base_model] = pool_weight.get(w.base_model, 0.0) + w.weight
            pool_size[w.base_model] = pool_size.get(w.base_model, 0) + 1
        for w in workers:
            i = rankings.position(w.id)
            self.slots[i], self.weight[i] = w.slots, w.weight
            mean = pool_rps.get(w.base_model, 0.0) / pool_weight[w.base_model]
            self.bound[i] = (1.0 + config.epsilon) * mean * w.weight * (1 + _TOLERANCE) + _TOLERANCE
            n = pool_size[w.base_model] if config.sticky else 0
            self.place_bound[i] = self.bound[i] * n / (n + 1) if n else self.bound[i]
            self.recall_bound[i] = self.bound[i] * n / (n + 2) if n else self.bound[i]
            self.share[i] = pool_count.get(w.base_model, 0) * w.weight / pool_weight[w.base_model]

    def run(self, hottest: Sequence[int],
            previous: Sequence[ReplicaSet | None]) -> list[tuple[str, ...]]:
        """Each adapter's chosen worker ids, best ranked first."""
        names = [a.name for a in self.adapters]
        kept: list[list[tuple[int, int]] | None] = [None] * len(names)
        beyond: set[int] = set()
        if self.config.sticky:
            kept, beyond = self._sticky(names, hottest, previous)
        chosen: list[tuple[str, ...]] = [()] * len(names)
        fill, release, targets, demands, ids = (self._fill, self._release, self.targets, self.demands,
                                                self.rankings.ids)
        for i in hottest:
            t = targets[i]
            if t:
                picked = kept[i]
                if picked and i in beyond:
                    release(names[i], t, demands[i].rps, picked)
                if picked is not None and len(picked) == t:
                    chosen[i] = (ids[picked[0][1]],) if t == 1 else tuple([ids[w] for _, w in sorted(picked)])
                else:
                    chosen[i] = fill(names[i], t, demands[i].rps, picked or [])
        return chosen

    def _sticky(self, names: list[str], hottest: Sequence[int], previous: Sequence[ReplicaSet | None],
                ) -> tuple[list[list[tuple[int, int]] | None], set[int]]:
        """Sticky pass: the (rank, worker) pairs each adapter keeps (None: it had no holder), and the
        adapters that keep a holder beyond their top t + k for now (see `_release`).

        Every current holder is kept first, with the bound applied after (`_rebound`): only the whole
        picture says which workers are over (1 + epsilon) x mean and by how much, so each gives up
        what best fits its excess instead of whatever adapter happened to be walked last. The bound
        is the plain one: a looser keep bound left the busiest worker at 1.29x the mean after a
        join (epsilon 0.25).
        """
        kept: list[list[tuple[int, int]] | None] = [None] * len(names)
        seen = {w for rs in previous if rs is not None for w in rs.workers}
        fresh = {i for wid, i in self.positions.items() if wid not in seen and self.slots[i] > 0}
        offers: list[int] = []
        beyond: list[int] = []
        k, keep, rank, targets, demands = self.config.sticky_k, self._keep, self._rank, self.targets, self.demands
        used, load, slots, rows, positions = self.used, self.load, self.slots, self.rows, self.positions
        for i in reversed(hottest):  # coldest first: where slots run short, the coldest keep theirs
            prev, t = previous[i], targets[i]
            if not t or prev is None or not prev.workers:
                continue
            row = rows[names[i]]
            if t == 1 and len(prev.workers) == 1 and len(row.idx) > 1 and (row.complete or len(row.idx) > k):
                # the common case, inlined for speed: the same rule as _keep with t = 1
                top, w = row.idx[:k + 1], positions.get(prev.workers[0])
                kept[i] = []
                if w is None or used[w] >= slots[w]:
                    continue
                if w in top:
                    pos = top.index(w)
                    if fresh and not fresh.isdisjoint(top):
                        offers.append(i)
                else:
                    beyond_pos = rank(names[i], w)
                    if beyond_pos is None:
                        continue
                    pos = beyond_pos
                    beyond.append(i)
                used[w] += 1
                load[w] += demands[i].rps
                kept[i] = [(pos, w)]
            else:
                picked = kept[i] = keep(names[i], t, demands[i].rps / t, prev.workers)
                if any(pos >= t + k for pos, _ in picked):
                    beyond.append(i)
                elif fresh and len(picked) == t and not fresh.isdisjoint(self._window(names[i], t + k)):
                    offers.append(i)
        self._rebound(names, kept, offers[::-1], fresh)
        return kept, set(beyond)

    def _window(self, name: str, window: int) -> list[int]:
        """The adapter's top `window` workers, best first."""
        row = self.rows[name]
        return (row.idx if row.complete or len(row.idx) >= window else self.rankings.full(name))[:window]

    def _rank(self, name: str, w: int) -> int | None:
        """Where worker w ranks for this adapter (None: not a candidate), whatever the prefix depth."""
        row = self.rows[name]
        if w in row.idx:
            return row.idx.index(w)
        if row.complete:
            return None
        ranking = self.rankings.full(name)
        return ranking.index(w) if w in ranking else None

    def _keep(self, name: str, t: int, item: float, held: tuple[str, ...]) -> list[tuple[int, int]]:
        """The best-ranked t current holders that have a slot, with their rank; no bound yet."""
        used, load, slots, positions = self.used, self.load, self.slots, self.positions
        candidates: list[tuple[int, int]] = []
        if t >= self.rankings.candidates(name):
            # on every candidate: there is nothing to choose, and placed now no one takes its room first
            candidates = list(enumerate(self._window(name, t)))
        else:
            for w in map(positions.get, held):
                if w is not None and (pos := self._rank(name, w)) is not None:
                    candidates.append((pos, w))
            if len(candidates) > 1:
                candidates.sort()
        picked: list[tuple[int, int]] = []
        for pos, w in candidates:
            if len(picked) >= t:
                break
            if used[w] < slots[w]:
                used[w] += 1
                load[w] += item
                picked.append((pos, w))
        return picked

    def _rebound(self, names: list[str], kept: list[list[tuple[int, int]] | None], offers: list[int],
                 fresh: set[int]) -> None:
        """Bring every worker back within its bound, then give workers that just joined (`fresh`)
        what plain HRW would give them, up to their share. `offers`: hottest first, the adapters
        that keep all their replicas and rank a fresh worker in their top t + k.

        A worker over its bound (demand shifted, a heavier worker joined) gives up the assignment
        that best fits its excess: the smallest at least as large, else the largest, and again.
        Why best fit and not the hottest (which is what keeping coldest first under the bound
        amounted to): one move either way, but the hottest frees far more room than needed, and
        room calls cold adapters parked below their top back (see `_release`), each one another
        move; with demand redrawn between the two plans, join churn fell from 1.14x to 0.84x the
        fair share (1,000 adapters, 32 workers). Why to a fresh worker first, when one is in that
        adapter's top t + k (where sticky mode then keeps it): the one move both relieves the old
        worker and feeds the new one, where shedding it elsewhere costs a move that feeds no one
        (0.95x without); for the same reason a fresh worker takes a smaller assignment than the best
        fit rather than none.

        Then fresh workers take the adapters that rank them in their top t, hottest first (each
        move is an adapter load: the fewest loads carry the most load over), each giving up its
        holder over the bound if any, else its lowest ranked one. Why stop at the fresh worker's
        share of assignments (total x its weight / pool weight) and not only at its bound: past
        its share every assignment it takes is a load that no bound asks for, and its HRW draw can
        be 1.4x the mean (worst join 1.11x the fair share without the stop, 0.99x with it); below
        its share the bound stops it when the adapters it draws are hot.
        """
        used, load, slots, bound, share, targets, demands = (self.used, self.load, self.slots, self.bound,
                                                             self.share, self.targets, self.demands)
        place_bound = self.place_bound
        ids, k, candidates = self.rankings.ids, self.config.sticky_k, self.rankings.candidates
        offered = set(offers)

        def fresh_spot(i: int, window: int) -> tuple[int, int] | None:
            """The best-ranked fresh worker in i's top `window` that can take one more of its replicas."""
            item = demands[i].rps / targets[i]
            holders = {w for _, w in kept[i] or ()}
            for pos, f in enumerate(self._window(names[i], window)):
                if (f in fresh and f not in holders and used[f] < slots[f] and used[f] + 1 <= share[f]
                        and load[f] + item <= place_bound[f]):
                    return pos, f
            return None

        over = [w for w in self.positions.values() if load[w] > bound[w]]
        if over:
            held: dict[int, list[tuple[float, int]]] = {w: [] for w in over}
            for i, picked in enumerate(kept):
                if picked:
                    for _, w in picked:
                        if w in held:
                            held[w].append((demands[i].rps / targets[i], i))
            over.sort(key=lambda w: (bound[w] - load[w], ids[w]))  # the furthest over first
            for h in over:
                # an adapter on every candidate has nowhere else to go
                items = sorted(x for x in held[h] if targets[x[1]] < candidates(names[x[1]]))
                while load[h] > bound[h] and items:
                    excess = load[h] - bound[h]
                    fits = [x for x in items if x[0] >= excess]
                    choice, to = fits[0] if fits else items[-1], None
                    for x in fits + [x for x in reversed(items) if x[0] < excess] if offered else ():
                        if x[1] in offered:
                            to = fresh_spot(x[1], targets[x[1]] + k)
                            if to is not None:
                                choice = x
                                break
                    items.remove(choice)
                    item, i = choice
                    picked = kept[i]
                    assert picked is not None
                    frm = next(p for p in picked if p[1] == h)
                    picked.remove(frm)
                    used[h] -= 1
                    load[h] -= item
                    if to is not None:
                        picked.append(to)
                        used[to[1]] += 1
                        load[to[1]] += item
        for i in offers:
            picked = kept[i]
            if picked is None or len(picked) < targets[i]:
                continue  # shed above: the fill places it, fresh workers included
            to = fresh_spot(i, targets[i])
            if to is not None:
                item = demands[i].rps / targets[i]
                frm = max(picked, key=lambda p: (load[p[1]] > bound[p[1]], p[0]))
                picked.remove(frm)
                picked.append(to)
                used[frm[1]] -= 1
                load[frm[1]] -= item
                used[to[1]] += 1
                load[to[1]] += item

    def _release(self, name: str, t: int, rps: float, picked: list[tuple[int, int]]) -> None:
        """A holder beyond the top t + k stays while fewer than t + k workers that hold the adapter
        or have room for it under `recall_bound` rank above it; otherwise it is let go and the
        fill walks from the top.

        Why not let every one go, as the plain window rule does: the bound, not the ranking, put
        them there (their better workers were full when they were placed), and a better worker
        that merely gained a little room is no reason for a cold adapter to move: each is an
        adapter load. With t + k better workers that could take it, it goes back, as under the
        window rule. Why room under the bound of two more workers: when one leaves, the mean rises
        one worker's worth and every worker placed up to `place_bound` gains exactly that room;
        counted, it called parked adapters back all over the fleet (a leave moved 1.28x what the
        leaving worker held, 1.00x now). Why judged at its turn in the fill (hottest first) and
        not before: the room left then is the room it would really find.
        """
        used, load, slots, bound = self.used, self.load, self.slots, self.recall_bound
        window = t + self.config.sticky_k
        item = rps / t
        ranking = self._window(name, max(pos for pos, _ in picked))
        for pos, h in sorted(picked):
            if pos < window:
                continue
            holders = {w for _, w in picked}
            ahead = sum(1 for w in ranking[:pos]
                        if w in holders or (used[w] < slots[w] and load[w] + item <= bound[w]))
            if ahead >= window:
                picked.remove((pos, h))
                used[h] -= 1
                load[h] -= item

    def _fill(self, name: str, t: int, rps: float, picked: list[tuple[int, int]]) -> tuple[str, ...]:
        """Walk the adapter's ranking for the replicas still missing, then the least loaded."""
        used, load, slots, bound, weight = self.used, self.load, self.slots, self.place_bound, self.weight
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
