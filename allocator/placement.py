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
thousand hashes), and what the catalog, demand, previous placement and config
give while they stay the same; `compute_placement` is the same function
without memory.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from allocator.config import ReplicaConfig, ReplicaPolicy, policy_for
from allocator.model import Adapter, Demand, Placement, ReplicaSet, Worker
from allocator.rankings import PrefixTable, Rankings
from allocator.sizing import policy_columns, size_columns

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


class _Catalog:
    """The adapters sorted by name, and what placement derives from the catalog alone."""

    def __init__(self, adapters: Sequence[Adapter]) -> None:
        self.given = list(adapters)
        """As passed: the next call with an equal list reuses all of this."""
        self.adapters = sorted(self.given, key=lambda a: a.name)
        self.names = [a.name for a in self.adapters]
        _unique(self.names, "adapter")
        self.base_models = [a.base_model for a in self.adapters]
        bases: dict[str, int] = {}
        self.base_code = np.fromiter((bases.setdefault(b, len(bases)) for b in self.base_models),
                                    dtype=np.int64, count=len(self.adapters))
        self.bases = list(bases)
        classes: dict[tuple[str, int], int] = {}
        self.class_code = np.fromiter((classes.setdefault((a.base_model, a.rank), len(classes))
                                       for a in self.adapters), dtype=np.int64, count=len(self.adapters))
        member = dict(zip(self.class_code.tolist(), self.names, strict=True))
        self.class_names = [member[c] for c in range(len(classes))]
        """One adapter of each candidate class, to ask the rankings how many candidates it has."""


class _Snapshot:
    """A dict's keys and values, to tell the same content again cheaply: the same keys, in the same
    order, mapped to the very same objects (equal is not enough: 0.0 == -0.0, and 1 == 1.0)."""

    def __init__(self, source: Mapping[str, Any]) -> None:
        self.plain = type(source) is dict  # another mapping's get need not agree with its iteration
        self.keys = list(source) if self.plain else []
        self.values = list(source.values()) if self.plain else []

    def matches(self, source: Mapping[str, Any]) -> bool:
        return (self.plain and type(source) is dict and len(source) == len(self.keys)
                and all(map(operator.is_, source.values(), self.values)) and list(source) == self.keys)


class _Demand:
    """The demand as columns over a catalog, and the hottest-first order it gives."""

    def __init__(self, catalog: _Catalog, demand: Mapping[str, Demand]) -> None:
        self.catalog, self.source = catalog, _Snapshot(demand)
        values = list(map(demand.get, catalog.names, itertools.repeat(NO_DEMAND)))
        n = len(values)
        self.rps_values = [d.rps for d in values]
        """As given (the walk's arithmetic and the placement's demand_rps use these, not the column)."""
        self.rps = np.fromiter(self.rps_values, dtype=np.float64, count=n)
        self.inflight = np.fromiter((d.inflight for d in values), dtype=np.float64, count=n)
        self.rps_is_float = np.fromiter((type(r) is float for r in self.rps_values), dtype=bool, count=n)
        self.hottest = np.lexsort((np.arange(n), -self.inflight, -self.rps))  # names are sorted


class _Previous:
    """The previous placement's sets as columns over a catalog."""

    def __init__(self, catalog: _Catalog, replica_sets: Mapping[str, ReplicaSet]) -> None:
        self.catalog, self.source = catalog, _Snapshot(replica_sets)
        self.sets: list[ReplicaSet | None] = list(map(replica_sets.get, catalog.names))
        self.aligned = self.source.plain and self.source.keys == catalog.names
        """The sets are exactly the catalog's, in its order: a copy of the dict is a placement's start."""
        sets = self.sets
        n = len(sets)
        present = [rs for rs in sets if rs is not None]
        self.none = np.fromiter((rs is None for rs in sets), dtype=bool, count=n)
        has = ~self.none
        fields = list(map(operator.attrgetter("workers", "replicas", "resized_at", "demand_rps"), present))
        workers, replicas, resized_at, demand_rps = zip(*fields, strict=True) if fields else ((), (), (), ())
        self.count = np.zeros(n, dtype=np.int64)
        self.count[has] = np.fromiter(map(len, workers), dtype=np.int64, count=len(present))
        codes: dict[str, int] = {}
        self.held = np.fromiter((codes.setdefault(w, len(codes)) for w in itertools.chain.from_iterable(workers)),
                                dtype=np.int64, count=int(self.count.sum()))
        """Every set's workers, set after set, as indices into `holders`."""
        self.starts = np.cumsum(self.count) - self.count
        """Where each set's workers begin in `held`."""
        self.first = np.full(n, -1, dtype=np.int64)
        self.first[self.count > 0] = self.held[self.starts[self.count > 0]]
        """Each set's first worker in `holders` (-1: none)."""
        self.holders = codes
        """Every worker that holds something -> its index into this table."""
        self.replicas = np.full(n, -1.0)
        self.replicas[has] = np.array(replicas, dtype=np.float64)
        self.resized_at = np.full(n, np.nan)
        self.resized_at[has] = np.array(resized_at, dtype=np.float64)
        self.demand_rps = np.zeros(n)
        self.demand_rps[has] = np.array(demand_rps, dtype=np.float64)
        self.reusable = np.zeros(n, dtype=bool)
        self.reusable[has] = np.fromiter(
            (type(rs) is ReplicaSet and type(f[0]) is tuple and type(f[1]) is int and type(f[2]) is float
             and type(f[3]) is float for rs, f in zip(present, fields, strict=True)), dtype=bool, count=len(present))
        """Sets whose fields have exactly the types a new one would: a set equal in value may stand in for it."""


class Planner:
    """Computes placements, caching between calls what did not change.

    The rankings (a membership change costs a few thousand hashes); and, each while its inputs
    are the same, what the catalog, the demand, the previous placement and the config give
    column by column over 100,000 adapters: sorting and checking names, the hottest-first order,
    previous replica counts and holders, policies. Demand and previous sets count as the same
    only when they are the very same objects, so nothing cached ever differs from what would
    be computed. A re-plan then touches per adapter only numpy columns, and in Python only the
    adapters that the join or leave (or the bound) concerns; a set equal to its previous one is
    that same object (100,000 new sets cost more than the whole sticky pass).
    """

    def __init__(self, depth: int = 32) -> None:
        self.rankings = Rankings(depth)
        self._policy_config: ReplicaConfig | None = None
        self._policies: dict[str, ReplicaPolicy] = {}
        self._catalog: _Catalog | None = None
        self._demand: _Demand | None = None
        self._previous: _Previous | None = None
        self._columns: tuple[_Catalog, ReplicaConfig, dict[str, np.ndarray]] | None = None

    def _policy(self, config: ReplicaConfig, name: str) -> ReplicaPolicy:
        if config != self._policy_config:
            self._policy_config, self._policies = config, {}
        policy = self._policies.get(name)
        if policy is None:
            policy = self._policies[name] = policy_for(config, name)
        return policy

    def _catalog_of(self, adapters: Sequence[Adapter]) -> _Catalog:
        if self._catalog is None or list(adapters) != self._catalog.given:
            self._catalog = _Catalog(adapters)
        return self._catalog

    def _demand_of(self, catalog: _Catalog, demand: Mapping[str, Demand]) -> _Demand:
        cached = self._demand
        if cached is None or cached.catalog is not catalog or not cached.source.matches(demand):
            cached = self._demand = _Demand(catalog, demand)
        return cached

    def _previous_of(self, catalog: _Catalog, replica_sets: Mapping[str, ReplicaSet]) -> _Previous:
        cached = self._previous
        if cached is None or cached.catalog is not catalog or not cached.source.matches(replica_sets):
            cached = self._previous = _Previous(catalog, replica_sets)
        return cached

    def _policy_columns(self, catalog: _Catalog, config: ReplicaConfig) -> dict[str, np.ndarray]:
        if self._columns is None or self._columns[0] is not catalog or self._columns[1] != config:
            self._columns = (catalog, config,
                             policy_columns([self._policy(config, name) for name in catalog.names]))
        return self._columns[2]

    def place(self, workers: Sequence[Worker], adapters: Sequence[Adapter],
              demand: Mapping[str, Demand], config: ReplicaConfig,
              previous: Placement | None, now: float) -> Placement:
        workers = sorted(workers, key=lambda w: w.id)
        _unique([w.id for w in workers], "worker")
        catalog = self._catalog_of(adapters)
        rankings = self.rankings
        rankings.sync(workers, catalog.adapters)
        dem = self._demand_of(catalog, demand)
        prev = self._previous_of(catalog, previous.replica_sets if previous is not None else {})
        candidates = np.array([rankings.candidates(name) for name in catalog.class_names],
                              dtype=np.int64)[catalog.class_code]
        replicas, resized_at = size_columns(self._policy_columns(catalog, config), dem.rps, dem.inflight,
                                            prev.replicas, np.where(prev.none, now, prev.resized_at),
                                            candidates, now)
        pool = _pool_slots(workers)
        need = np.bincount(catalog.base_code, weights=replicas, minlength=len(catalog.bases))
        if all(n <= pool.get(base, 0) for base, n in zip(catalog.bases, need.tolist(), strict=True)):
            targets = replicas
        else:
            targets = np.array(fit_to_slots(catalog.base_models, replicas.tolist(), dem.hottest.tolist(), pool),
                               dtype=np.int64)

        walk = _Walk(rankings, workers, catalog, dem, targets, candidates, config)
        kept, chosen = walk.run(prev)
        same = kept >= 0
        lengths = same.astype(np.int64)
        unchanged = (targets == 0) & (prev.count == 0)  # chose nothing, held nothing
        if same.any():  # kept its one holder
            unchanged |= same & (prev.count == 1) & (kept == walk.holder_at[prev.first])
        for i, picked in chosen.items():
            lengths[i] = len(picked)
            rs = prev.sets[i]
            unchanged[i] = rs is not None and rs.workers == picked
        reuse = (unchanged & prev.reusable & dem.rps_is_float & (replicas == prev.replicas)
                 & (resized_at.view(np.int64) == prev.resized_at.view(np.int64))
                 & (dem.rps.view(np.int64) == prev.demand_rps.view(np.int64)))
        rps, ids, changed = dem.rps_values, rankings.ids, np.flatnonzero(~reuse)
        new = {i: ReplicaSet(workers=(ids[w],) if w >= 0 else chosen.get(i, ()), replicas=r, resized_at=at,
                             demand_rps=rps[i])
               for i, w, r, at in zip(changed.tolist(), kept[changed].tolist(), replicas[changed].tolist(),
                                      resized_at[changed].tolist(), strict=True)}
        names = catalog.names
        if previous is not None and prev.aligned:  # copying the dict costs a twentieth of building it
            replica_sets = dict(previous.replica_sets)
            for i, rs in new.items():
                replica_sets[names[i]] = rs
        else:
            replica_sets = {name: new[i] if i in new else prev.sets[i]  # type: ignore[misc]
                            for i, name in enumerate(names)}
        return Placement(epoch=(previous.epoch + 1) if previous is not None else 1, computed_at=now,
                         replica_sets=replica_sets,
                         unplaced=tuple(names[i] for i in np.flatnonzero(lengths < replicas).tolist()))


class _Kept:
    """The (rank, worker) pairs each adapter keeps of its current holders.

    Most adapters keep exactly one holder: those sit in two arrays, filled by one vectorised
    pass; a list is made only for an adapter that keeps several or that a later rule touches
    (`get`), so 100,000 one-element lists are never built.
    """

    def __init__(self, n: int) -> None:
        self.worker = np.full(n, -1, dtype=np.int64)
        """The one holder kept (-1: none, or it moved to `lists`)."""
        self.rank = np.zeros(n, dtype=np.int64)
        self.lists: dict[int, list[tuple[int, int]]] = {}

    def get(self, i: int) -> list[tuple[int, int]] | None:
        """Adapter i's pairs as a list the caller may change (None: it kept nothing)."""
        picked = self.lists.get(i)
        if picked is None and self.worker[i] >= 0:
            picked = self.lists[i] = [(int(self.rank[i]), int(self.worker[i]))]
            self.worker[i] = -1
        return picked


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

    Per-adapter work is numpy columns wherever the rules allow, and sums of floats are taken in
    the order a one-adapter-at-a-time pass would take them (`np.bincount` adds in index order),
    so every load, bound and decision is bit for bit what that pass computes.
    """

    def __init__(self, rankings: Rankings, workers: Sequence[Worker], catalog: _Catalog, demand: _Demand,
                 targets: np.ndarray, candidates: np.ndarray, config: ReplicaConfig) -> None:
        self.rankings = rankings
        self.candidates_column = candidates
        self.holder_at = np.full(1, -1, dtype=np.int64)
        """Each previous holder's worker index, -1 for one gone (and last, for no holder)."""
        self.candidates: list[int] = candidates.tolist()
        """How many workers could hold each adapter."""
        self.rows = rankings.rows
        self.positions = rankings.positions
        self.names = catalog.names
        self.hottest = demand.hottest
        self.rps = demand.rps_values
        self.rps_column = demand.rps
        self.t = targets
        """Each adapter's replica target t, as a column; `targets` as a list."""
        self.targets: list[int] = targets.tolist()
        self.config = config
        self.size = size = len(rankings.workers)
        at = np.fromiter((self.positions[w.id] for w in workers), dtype=np.int64, count=len(workers))
        slots = np.fromiter((w.slots for w in workers), dtype=np.int64, count=len(workers))
        weight = np.fromiter((w.weight for w in workers), dtype=np.float64, count=len(workers))
        pools: dict[str, int] = {}
        pool = np.fromiter((pools.setdefault(w.base_model, len(pools)) for w in workers), dtype=np.int64,
                           count=len(workers))
        # per pool, summed in the order a loop over adapters (by name) and workers (by id) would
        active = targets > 0
        codes = np.array([pools.get(base, -1) for base in catalog.bases], dtype=np.int64)[catalog.base_code]
        served = active & (codes >= 0)
        pool_rps = np.bincount(codes[served], weights=demand.rps[served], minlength=len(pools))
        pool_count = np.bincount(codes[served], weights=targets[served], minlength=len(pools))
        pool_weight = np.bincount(pool, weights=weight, minlength=len(pools))
        if np.any(pool_weight == 0.0):
            raise ZeroDivisionError("float division by zero")  # a pool whose weights sum to zero has no mean
        pool_size = np.bincount(pool, minlength=len(pools))
        mean = pool_rps[pool] / pool_weight[pool]
        bound = (1.0 + config.epsilon) * mean * weight * (1 + _TOLERANCE) + _TOLERANCE
        n = pool_size[pool] if config.sticky else np.zeros(len(workers), dtype=np.int64)

        def scatter(values: np.ndarray, default: float) -> list[Any]:
            out = np.full(size, default, dtype=values.dtype)
            out[at] = values
            return out.tolist()  # type: ignore[no-any-return]

        self.used = [0] * size
        self.load = [0.0] * size
        self.slots: list[int] = scatter(slots, 0)
        self.weight: list[float] = scatter(weight, 1.0)
        self.bound: list[float] = scatter(bound, 0.0)
        self.place_bound: list[float] = scatter(np.where(n > 0, bound * n / (n + 1), bound), 0.0)
        self.recall_bound: list[float] = scatter(np.where(n > 0, bound * n / (n + 2), bound), 0.0)
        self.share: list[float] = scatter(pool_count[pool] * weight / pool_weight[pool], 0.0)
        """Assignments per worker if its pool's were spread evenly by weight."""

    def run(self, previous: _Previous) -> tuple[np.ndarray, dict[int, tuple[str, ...]]]:
        """The chosen workers: per adapter the one worker the sticky pass kept for it, untouched
        since (-1: see the dict); and, for every other adapter asked for any, its worker ids best
        ranked first.

        Adapters are walked hottest first, but only those whose turn can change anything: one
        that keeps all it asks for within its top t + k neither releases nor fills.
        """
        kept = _Kept(len(self.names))
        beyond: set[int] = set()
        if self.config.sticky:
            beyond = self._sticky(previous, kept)
        stays = self._staying(kept, beyond)
        settled = kept.worker >= 0
        settled[list(beyond)] = False
        chosen: dict[int, tuple[str, ...]] = {}
        fill, release, targets, rps, names, ids = (self._fill, self._release, self.targets, self.rps, self.names,
                                                   self.rankings.ids)
        hottest = self.hottest
        freed = False
        for i in hottest[((self.t > 0) & ~settled)[hottest]].tolist():
            if i in stays and not freed:
                continue  # stays, as judged before the walk: nothing since has freed room
            t = targets[i]
            picked = kept.get(i)
            if picked and i in beyond:
                freed |= release(names[i], t, rps[i], picked)
            if picked is not None and len(picked) == t:
                chosen[i] = (ids[picked[0][1]],) if t == 1 else tuple([ids[w] for _, w in sorted(picked)])
            else:
                chosen[i] = fill(names[i], t, rps[i], picked or [])
        return kept.worker, chosen

    def _sticky(self, previous: _Previous, kept: _Kept) -> set[int]:
        """Sticky pass: fills `kept` with the (rank, worker) pairs each adapter keeps; returns the
        adapters that keep a holder beyond their top t + k for now (see `_release`).

        Every current holder is kept first, with the bound applied after (`_rebound`): only the whole
        picture says which workers are over (1 + epsilon) x mean and by how much, so each gives up
        what best fits its excess instead of whatever adapter happened to be walked last. The bound
        is the plain one: a looser keep bound left the busiest worker at 1.29x the mean after a
        join (epsilon 0.25).

        Adapters are taken coldest first (where slots run short, the coldest keep theirs), each
        keeping its best-ranked t holders that have a free slot; an adapter on every candidate
        keeps its top t, held or not (there is nothing to choose, and placed now no one takes its
        room first). Taken one at a time in Python that was most of a re-plan at 100,000
        adapters, so all (adapter, holder) pairs are ranked at once, and only the adapters with a
        holder that could run out of slots (more pairs on it than slots) wait their turn.
        """
        k, names, targets, slots, size, t = (self.config.sticky_k, self.names, self.targets, self.slots,
                                             self.size, self.t)
        visit = (t > 0) & (previous.count > 0)
        if not visit.any():
            return set()  # nothing held: nothing kept, no worker over its bound, nothing to offer
        table = self.rankings.table()
        owner, rank, worker = self._candidate_pairs(previous, visit, table)
        keep = self._first_t(owner, worker)
        owner, rank, worker = owner[keep], rank[keep], worker[keep]

        # what each keeps: one pair in the arrays, more in lists
        got = np.bincount(owner, minlength=len(names))
        one = ((got == 1) & (t == 1))[owner]
        kept.worker[owner[one]], kept.rank[owner[one]] = worker[one], rank[one]
        pairs = list(zip(rank[~one].tolist(), worker[~one].tolist(), strict=True))
        bounds = np.flatnonzero(np.diff(owner[~one], prepend=-1, append=-1)).tolist()
        for i, (a, b) in zip(owner[~one][bounds[:-1]].tolist(), itertools.pairwise(bounds), strict=True):
            kept.lists[i] = pairs[a:b]
        beyond = np.zeros(len(names), dtype=bool)
        beyond[owner[rank >= t[owner] + k]] = True

        fresh = {i for wid, i in self.positions.items() if wid not in previous.holders and slots[i] > 0}
        offers = np.zeros(len(names), dtype=bool)
        if fresh:  # offered: keeps all it asks for, within its top t + k, where a fresh worker ranks too
            is_fresh = np.zeros(size + 1, dtype=bool)  # the last entry: what -1 (no worker) reads
            is_fresh[list(fresh)] = True
            whole, window = visit & ~beyond & (got == t), t + k
            near = whole & (table.complete | (table.length >= window))  # the top t + k lies in the prefix
            narrow = near & (t == 1)  # most: k + 1 columns
            offers[narrow] = is_fresh[table.idx[narrow, :k + 1]].any(axis=1)
            wide = near & (t > 1)
            offers[wide] = (is_fresh[table.idx[wide]]
                            & (np.arange(table.idx.shape[1]) < window[wide, None])).any(axis=1)
            for i in np.flatnonzero(whole & ~near).tolist():
                offers[i] = not fresh.isdisjoint(self._window(names[i], targets[i] + k))

        # loads, added in the coldest-first order of a one-adapter-at-a-time pass
        item = self.rps_column.copy()
        several = np.flatnonzero(t > 1)
        item[several] = [self.rps[i] / targets[i] for i in several.tolist()]  # Python's division, as that pass
        turn = np.empty(len(names), dtype=np.int64)
        turn[self.hottest[::-1]] = np.arange(len(names))
        by_turn = np.argsort(turn[owner], kind="stable")
        self.used = np.bincount(worker, minlength=size).tolist()
        self.load = np.bincount(worker[by_turn], weights=item[owner[by_turn]], minlength=size).tolist()
        self._rebound(kept, self.hottest[offers[self.hottest]].tolist(), fresh)
        return set(np.flatnonzero(beyond).tolist())

    def _candidate_pairs(self, previous: _Previous, visit: np.ndarray, table: PrefixTable,
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(adapter, rank, worker) of what each visited adapter may keep, grouped by adapter, best
        first: its holders that still rank for it; or, on every candidate, its top t."""
        everywhere = visit & (self.t >= self.candidates_column)
        owner, rank, worker = self._holder_ranks(previous, np.flatnonzero(visit & ~everywhere), table)
        order = np.arange(len(owner))  # grouped by adapter already: sort the groups of several
        several = np.flatnonzero(np.bincount(owner, minlength=len(self.names))[owner] > 1)
        order[several] = several[np.lexsort((rank[several], owner[several]))]
        tops = [(i, self._window(self.names[i], self.targets[i])) for i in np.flatnonzero(everywhere).tolist()]
        return (np.concatenate([owner[order], *[np.full(len(top), i, dtype=np.int64) for i, top in tops]]),
                np.concatenate([rank[order], *[np.arange(len(top), dtype=np.int64) for _, top in tops]]),
                np.concatenate([worker[order], *[np.array(top, dtype=np.int64) for _, top in tops]]))

    def _first_t(self, owner: np.ndarray, worker: np.ndarray) -> np.ndarray:
        """Which pairs are kept: each adapter's first t whose worker has a free slot, coldest first.

        Where a worker has at least as many slots as pairs on it, every pair on it finds one, in
        any order: those are each adapter's first t. The adapters with a pair on a worker that
        could run out take their turns, and only their pairs count against its slots.
        """
        slots, targets, size = self.slots, self.targets, self.size
        first = np.flatnonzero(np.diff(owner, prepend=-1))  # where each adapter's pairs begin
        keep: np.ndarray = np.arange(len(owner)) - np.repeat(first, np.diff(first, append=len(owner))) < self.t[owner]
        short = np.bincount(worker, minlength=size) > np.array(slots, dtype=np.int64)
        queued = np.zeros(len(self.names), dtype=bool)
        queued[owner[short[worker]]] = True
        if not queued.any():
            return keep
        spans = {i: range(a, b) for i, a, b in zip(owner[first].tolist(), first.tolist(),
                                                   [*first[1:].tolist(), len(owner)], strict=True) if queued[i]}
        keep[np.concatenate([np.arange(span.start, span.stop) for span in spans.values()])] = False
        used, workers = [0] * size, worker.tolist()
        coldest = self.hottest[::-1]
        for i in coldest[queued[coldest]].tolist():
            taken, t = 0, targets[i]
            for p in spans[i]:
                if taken == t:
                    break
                w = workers[p]
                if used[w] < slots[w]:
                    used[w] += 1
                    taken += 1
                    keep[p] = True
        return keep

    def _holder_ranks(self, previous: _Previous, adapters: np.ndarray, table: PrefixTable,
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(adapter, rank, worker) for each current holder of these adapters that ranks for it."""
        k, depth = self.config.sticky_k, table.idx.shape[1]
        count = previous.count[adapters]
        owner = np.repeat(adapters, count)
        at = self.holder_at = np.array([*map(self.positions.get, previous.holders, itertools.repeat(-1)), -1],
                                       dtype=np.int64)
        offset = np.repeat(previous.starts[adapters] - (np.cumsum(count) - count), count)
        worker = at[previous.held[np.arange(len(owner)) + offset]]  # -1: no longer a worker
        wanted = np.where(worker >= 0, worker, -2)  # -2 matches nothing, not even the -1 pad
        rank = np.full(len(owner), -1, dtype=np.int64)
        for j in range(min(k + 1, depth) - 1, -1, -1):  # most rank in their top k + 1: a narrow look first
            rank[table.idx[owner, j] == wanted] = j
        lower = np.flatnonzero((rank < 0) & (worker >= 0))
        if k + 1 < depth:
            hit = table.idx[owner[lower]] == wanted[lower, None]
            found = hit.any(axis=1)
            rank[lower[found]] = hit.argmax(axis=1)[found]
            lower = lower[~found]
        deeper = lower[~table.complete[owner[lower]]]  # past the prefix: the full ranking says
        bounds = np.flatnonzero(np.diff(owner[deeper], prepend=-1, append=-1)).tolist()
        for a, b in itertools.pairwise(bounds):
            rank[deeper[a:b]] = self.rankings.ranks(self.names[owner[deeper[a]]], worker[deeper[a:b]].tolist())
        found = rank >= 0
        return owner[found], rank[found], worker[found]

    def _window(self, name: str, window: int) -> list[int]:
        """The adapter's top `window` workers, best first."""
        row = self.rankings.rows[name]
        return (row.idx if row.complete or len(row.idx) >= window else self.rankings.full(name))[:window]

    def _rebound(self, kept: _Kept, offers: list[int], fresh: set[int]) -> None:
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
        used, load, slots, bound, share, targets, rps = (self.used, self.load, self.slots, self.bound,
                                                         self.share, self.targets, self.rps)
        place_bound, names = self.place_bound, self.names
        ids, k, candidates = self.rankings.ids, self.config.sticky_k, self.candidates
        offered = set(offers)

        def fresh_spot(i: int, window: int) -> tuple[int, int] | None:
            """The best-ranked fresh worker in i's top `window` that can take one more of its replicas."""
            item = rps[i] / targets[i]
            holders = {w for _, w in kept.get(i) or ()}
            for pos, f in enumerate(self._window(names[i], window)):
                if (f in fresh and f not in holders and used[f] < slots[f] and used[f] + 1 <= share[f]
                        and load[f] + item <= place_bound[f]):
                    return pos, f
            return None

        over = [w for w in self.positions.values() if load[w] > bound[w]]
        if over:
            held: dict[int, list[tuple[float, int]]] = {w: [] for w in over}
            is_over = np.zeros(self.size + 1, dtype=bool)  # the last entry: what -1 (no worker) reads
            is_over[over] = True
            for i in np.flatnonzero(is_over[kept.worker]).tolist():
                held[int(kept.worker[i])].append((rps[i] / targets[i], i))
            for i, picked in kept.lists.items():
                for _, w in picked:
                    if w in held:
                        held[w].append((rps[i] / targets[i], i))
            over.sort(key=lambda w: (bound[w] - load[w], ids[w]))  # the furthest over first
            for h in over:
                # an adapter on every candidate has nowhere else to go
                items = sorted(x for x in held[h] if targets[x[1]] < candidates[x[1]])
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
                    pairs = kept.get(i)
                    assert pairs is not None
                    frm = next(p for p in pairs if p[1] == h)
                    pairs.remove(frm)
                    used[h] -= 1
                    load[h] -= item
                    if to is not None:
                        pairs.append(to)
                        used[to[1]] += 1
                        load[to[1]] += item
        for i in offers:
            pairs = kept.get(i)
            if pairs is None or len(pairs) < targets[i]:
                continue  # shed above: the fill places it, fresh workers included
            to = fresh_spot(i, targets[i])
            if to is not None:
                item = rps[i] / targets[i]
                frm = max(pairs, key=lambda p: (load[p[1]] > bound[p[1]], p[0]))
                pairs.remove(frm)
                pairs.append(to)
                used[frm[1]] -= 1
                load[frm[1]] -= item
                used[to[1]] += 1
                load[to[1]] += item

    def _staying(self, kept: _Kept, beyond: set[int]) -> set[int]:
        """The adapters beyond their top t + k whose one holder `_release` would keep, judged on
        the counters as the walk starts: there are thousands, and the walk lets go of few.

        Why the judgement holds at each one's turn: until a release frees room, the walk only
        takes room (fills add assignments and load), so no worker ranked above the holder gains
        room, and fewer than t + k with room stay fewer. Demand below zero would free room as
        it is placed: then nothing is judged ahead. A holder past the ranking's prefix is judged
        at its turn, as is an adapter that keeps several.
        """
        if not beyond or bool(np.any(self.rps_column < 0)):
            return set()
        table, k, size = self.rankings.table(), self.config.sticky_k, self.size
        rows = np.array(sorted(beyond), dtype=np.int64)
        rows = rows[kept.worker[rows] >= 0]
        pos = kept.rank[rows]
        rows, pos = rows[pos <= table.length[rows]], pos[pos <= table.length[rows]]
        # ranking[:pos] of each, padded with `size`: a worker index that reads as having no room
        ahead = np.where(np.arange(table.idx.shape[1]) < pos[:, None], table.idx[rows], size)
        used, slots = np.array([*self.used, 0]), np.array([*self.slots, 0])
        load, bound = np.array([*self.load, 0.0]), np.array([*self.recall_bound, 0.0])
        room = (used[ahead] < slots[ahead]) & (load[ahead] + self.rps_column[rows, None] <= bound[ahead])
        stays: list[int] = rows[room.sum(axis=1) < 1 + k].tolist()  # t = 1: window = 1 + k
        return set(stays)

    def _release(self, name: str, t: int, rps: float, picked: list[tuple[int, int]]) -> bool:
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
        not before: the room left then is the room it would really find. True if it let one go.
        """
        used, load, slots, bound = self.used, self.load, self.slots, self.recall_bound
        released = False
        window = t + self.config.sticky_k
        item = rps / t
        ranking = self._window(name, max(pos for pos, _ in picked))
        for pos, h in sorted(picked):
            if pos < window:
                continue
            holders = {w for _, w in picked}
            ahead = 0
            for w in ranking[:pos]:
                if w in holders or (used[w] < slots[w] and load[w] + item <= bound[w]):
                    ahead += 1
                    if ahead == window:  # enough to decide
                        break
            if ahead >= window:
                picked.remove((pos, h))
                used[h] -= 1
                load[h] -= item
                released = True
        return released

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
