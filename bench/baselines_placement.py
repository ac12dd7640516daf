"""Placement strategies to compare against the allocator, each stepping tick by tick.

- `OursStrategy`: the allocator itself (estimator -> sizing -> capacity-bounded HRW).
- `DynamoStrategy`: NVIDIA Dynamo's approach as described in its code: replica
  count relative to the adapter's share of total load times total slots
  (largest-remainder scale-down when over), EMA-smoothed load, scale-down-only
  cooldown of 3 ticks, slot-aware HRW top-r, one cold-start pin for idle adapters.
- `RingStrategy`: consistent hashing with bounded loads (Mirrokni et al.): a ring
  of virtual nodes, each adapter walks clockwise and skips workers over
  ceil-style (1 + eps) x mean load or out of slots. Same replica counts as ours.
- `RandomStrategy`: replicas drawn uniformly among workers with a free slot,
  seeded per adapter (stable while membership is). Same replica counts as ours.

Every strategy returns a `Placement`, so churn and imbalance are measured by
the same functions for all.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import xxhash

from allocator import estimator, hrw
from allocator.config import ReplicaConfig
from allocator.model import Adapter, Demand, Placement, ReplicaSet, Worker
from allocator.placement import Planner

Tick = tuple[Sequence[Worker], Sequence[Adapter], Mapping[str, float]]
"""Workers, adapters and the arrival rate measured this tick per adapter."""


class PlacementStrategy(Protocol):
    """What the comparison steps: every strategy below, under the name its figures are reported by."""

    name: str

    def step(self, workers: Sequence[Worker], adapters: Sequence[Adapter],
             measured: Mapping[str, float]) -> Placement: ...


def _placement(sets: dict[str, tuple[str, ...]], replicas: Mapping[str, int],
               rps: Mapping[str, float]) -> Placement:
    return Placement(replica_sets={a: ReplicaSet(workers=ws, replicas=replicas[a], demand_rps=rps.get(a, 0.0))
                                   for a, ws in sets.items()})


class OursStrategy:
    name = "allocator (sticky)"

    def __init__(self, config: ReplicaConfig, tick_s: float) -> None:
        self.config, self.tick_s = config, tick_s
        self.planner = Planner()
        self.estimates: dict[str, Demand] = {}
        self.previous: Placement | None = None
        self.now = 0.0

    def step(self, workers: Sequence[Worker], adapters: Sequence[Adapter],
             measured: Mapping[str, float], inflight: Mapping[str, float] | None = None) -> Placement:
        """`inflight`: requests per adapter arrived and not finished at this tick, as the router counts them."""
        self.now += self.tick_s
        arrivals = {a: r * self.tick_s for a, r in measured.items()}
        self.estimates = estimator.update_all(self.estimates, arrivals, inflight or {}, self.tick_s,
                                              self.config.rise_tau_s, self.config.fall_tau_s)
        self.previous = self.planner.place(workers, adapters, self.estimates, self.config,
                                           self.previous, self.now)
        return self.previous


class DynamoStrategy:
    name = "dynamo-style relative"

    def __init__(self, alpha: float = 0.4, cooldown_ticks: int = 3) -> None:
        self.alpha, self.cooldown = alpha, cooldown_ticks
        self.ema: dict[str, float] = {}
        self.replicas: dict[str, int] = {}
        self.lower_for: dict[str, int] = {}
        self.rankings = HrwOrders()

    def _sizes(self, adapters: Sequence[Adapter], total_slots: int, n: int) -> dict[str, int]:
        total = sum(self.ema.get(a.name, 0.0) for a in adapters)
        want: dict[str, float] = {}
        for a in adapters:
            load = self.ema.get(a.name, 0.0)
            want[a.name] = min(n, max(1, math.ceil(load / total * total_slots))) if total > 0 and load > 0.01 \
                else 1
        if sum(want.values()) > total_slots:
            scale = total_slots / sum(want.values())
            quota = {a: max(1.0, w * scale) for a, w in want.items()}
            floors = {a: int(q) for a, q in quota.items()}
            spare = total_slots - sum(floors.values())
            for name in sorted(quota, key=lambda a: (-(quota[a] - floors[a]), a))[:max(0, spare)]:
                floors[name] += 1
            want = dict(floors)
        sizes: dict[str, int] = {}
        for name, wanted in want.items():
            r = int(wanted)
            prev = self.replicas.get(name)
            if prev is not None and r < prev:
                self.lower_for[name] = self.lower_for.get(name, 0) + 1
                if self.lower_for[name] < self.cooldown:
                    r = prev
            if prev is None or r >= prev:
                self.lower_for[name] = 0
            sizes[name] = r
        self.replicas = sizes
        return sizes

    def step(self, workers: Sequence[Worker], adapters: Sequence[Adapter],
             measured: Mapping[str, float]) -> Placement:
        for a in adapters:
            self.ema[a.name] = self.alpha * measured.get(a.name, 0.0) + (1 - self.alpha) * self.ema.get(a.name, 0.0)
        sizes = self._sizes(adapters, sum(w.slots for w in workers), len(workers))
        rankings = self.rankings.of(workers, adapters)
        ids = [w.id for w in workers]
        used = [0] * len(workers)
        slots = [w.slots for w in workers]
        open_ = sum(1 for n in slots if n > 0)
        """Workers with a free slot: once none is left every adapter takes its plain HRW top."""
        sets: dict[str, tuple[str, ...]] = {}
        for a in sorted(adapters, key=lambda a: (-self.ema.get(a.name, 0.0), a.name)):
            ranked, size = rankings[a.name], sizes[a.name]
            chosen = [i for i in ranked.tolist() if used[i] < slots[i]][:size] if open_ else []
            if not chosen:  # all full: plain HRW
                chosen = ranked[:size].tolist()
            for i in chosen:
                used[i] += 1
                if used[i] == slots[i]:
                    open_ -= 1
            sets[a.name] = tuple([ids[i] for i in chosen])
        return _placement(sets, sizes, self.ema)


class HrwOrders:
    """Every adapter's whole HRW ranking (indices into `workers`, as `hrw.rank_workers` orders them),
    scored in bulk and kept until the workers or the catalog change: Dynamo re-walks them every tick."""

    CHUNK = 256

    def __init__(self) -> None:
        self._for: tuple[tuple[Worker, ...], tuple[Adapter, ...]] | None = None
        self._rows: dict[str, np.ndarray] = {}

    def of(self, workers: Sequence[Worker], adapters: Sequence[Adapter]) -> dict[str, np.ndarray]:
        key = (tuple(workers), tuple(adapters))
        if key != self._for:
            self._for, self._rows = key, self._rank(workers, adapters)
        return self._rows

    def _rank(self, workers: Sequence[Worker], adapters: Sequence[Adapter]) -> dict[str, np.ndarray]:
        ids = [w.id for w in workers]
        lanes = hrw.worker_lanes(hrw.keys(ids))
        weights = np.fromiter((w.weight for w in workers), dtype=np.float64, count=len(workers))
        id_order = np.argsort(np.argsort(np.array(ids, dtype=object), kind="stable"), kind="stable")
        names = [a.name for a in adapters]
        rows: dict[str, np.ndarray] = {}
        for start in range(0, len(names), self.CHUNK):
            block = names[start:start + self.CHUNK]
            scores = hrw.pair_scores(hrw.adapter_states(hrw.keys(block)), lanes, weights)
            ranked = np.lexsort((np.broadcast_to(id_order, scores.shape), -scores), axis=1)
            rows.update(zip(block, ranked, strict=True))
        return rows


class _SameSizes:
    """Baselines that only differ from ours in WHERE replicas go take our sizes each tick."""

    def __init__(self, ours: OursStrategy, epsilon: float) -> None:
        self.ours, self.epsilon = ours, epsilon

    def step(self, workers: Sequence[Worker], adapters: Sequence[Adapter],
             measured: Mapping[str, float]) -> Placement:
        reference = self.ours.previous
        if reference is None:
            raise RuntimeError("step the allocator before the baselines that reuse its sizes")
        sizes = {a.name: reference.replica_sets[a.name].replicas for a in adapters}
        rps = {a.name: reference.replica_sets[a.name].demand_rps for a in adapters}
        mean = sum(rps.values()) / max(1, len(workers))
        state = _Fill(workers, (1 + self.epsilon) * mean)
        sets = {a.name: self.choose(a.name, sizes[a.name], rps[a.name], workers, state)
                for a in sorted(adapters, key=lambda a: (-rps[a.name], a.name))}
        return _placement(sets, sizes, rps)

    def choose(self, adapter: str, r: int, rps: float, workers: Sequence[Worker],
               state: _Fill) -> tuple[str, ...]:
        raise NotImplementedError


class _Fill:
    def __init__(self, workers: Sequence[Worker], bound: float) -> None:
        self.used = {w.id: 0 for w in workers}
        self.load = {w.id: 0.0 for w in workers}
        self.slots = {w.id: w.slots for w in workers}
        self.bound = bound

    def fits(self, w: str, item: float) -> bool:
        return self.used[w] < self.slots[w] and self.load[w] + item <= self.bound + 1e-9

    def take(self, ws: Sequence[str], rps: float) -> tuple[str, ...]:
        for w in ws:
            self.used[w] += 1
            self.load[w] += rps / len(ws)
        return tuple(ws)


class RingStrategy(_SameSizes):
    name = "ring + bounded loads"
    VNODES = 100

    def __init__(self, ours: OursStrategy, epsilon: float) -> None:
        super().__init__(ours, epsilon)
        self._ring_for: tuple[str, ...] = ()
        self._points: list[int] = []
        self._owners: list[str] = []

    def _ring(self, workers: Sequence[Worker]) -> None:
        ids = tuple(sorted(w.id for w in workers))
        if ids != self._ring_for:
            points = sorted((xxhash.xxh64_intdigest(f"{wid}#{v}".encode()), wid)
                            for wid in ids for v in range(self.VNODES))
            self._ring_for, self._points, self._owners = ids, [p for p, _ in points], [w for _, w in points]

    def choose(self, adapter: str, r: int, rps: float, workers: Sequence[Worker],
               state: _Fill) -> tuple[str, ...]:
        self._ring(workers)
        item = rps / r if r else 0.0
        start = bisect.bisect(self._points, xxhash.xxh64_intdigest(adapter.encode()))
        chosen: list[str] = []
        fallback: list[str] = []
        for step in range(len(self._owners)):
            w = self._owners[(start + step) % len(self._owners)]
            if w in chosen or w in fallback:
                continue
            if state.fits(w, item):
                chosen.append(w)
            elif state.used[w] < state.slots[w]:
                fallback.append(w)
            if len(chosen) == r:
                break
        chosen += fallback[:r - len(chosen)]
        return state.take(chosen, rps)


class RandomStrategy(_SameSizes):
    name = "random"

    def choose(self, adapter: str, r: int, rps: float, workers: Sequence[Worker],
               state: _Fill) -> tuple[str, ...]:
        rng = random.Random(xxhash.xxh64_intdigest(adapter.encode()))
        free = [w.id for w in sorted(workers, key=lambda w: w.id) if state.used[w.id] < state.slots[w.id]]
        return state.take(rng.sample(free, min(r, len(free))), rps)


def noisy_zipf(n: int, s: float, total_rps: float, noise: float, rng: np.random.Generator) -> dict[str, float]:
    """One tick's measured rates: Zipf means times uniform +-noise."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    rates = total_rps * weights / weights.sum() * rng.uniform(1 - noise, 1 + noise, n)
    return {f"a{i}": float(r) for i, r in enumerate(rates)}
