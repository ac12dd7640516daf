"""Routing strategies side by side, each a `route(rid, adapter)` over a `Fleet`.

Strategies without placement submit wherever they pick; the engine then reads
the adapter from disk into its host LRU and swaps it into a GPU slot, evicting
least recently used ones — what vLLM's filesystem resolver does. `dynamo-hrw`
narrows routing to Dynamo's replica sets (bench/baselines_placement.py) but,
like Dynamo, loads nothing itself. `lora-router` runs the allocator's
placement on the control loop's clock (tick, reconcile, load latency), picks
among holders with room for the adapter in their GPU slots with the router's
own `router.picking`, and otherwise loads the adapter on its best-ranked HRW
worker that has room (a cold start when no one holds it), the request waiting
for the load.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import numpy as np

from allocator import hrw, plan
from allocator.config import ReplicaConfig
from allocator.model import Adapter, Placement, Worker
from bench.baselines_placement import DynamoStrategy, OursStrategy
from bench.sim.fleet import Fleet, WorkerState
from router.picking import first_with_room, pick_with_room, power_of_two

BASE = "base"
TOP = 32
"""How far an adapter's HRW ranking is kept (as far as the allocator's rankings keep theirs)."""


class ControlLoop:
    """The router's control-loop timing (router/reconciler.py): a placement every `tick_s`; a plan round
    `reconcile_s` after each placement (propagation through etcd) and `listing_s` after each finished load
    (the worker's /v1/models shows it, the holdings changed); every load takes the engine's load cost."""

    def __init__(self, tick_s: float = 2.0, reconcile_s: float = 0.5, listing_s: float = 0.05) -> None:
        self.tick_s, self.reconcile_s, self.listing_s = tick_s, reconcile_s, listing_s


class Strategy:
    """Base: a seeded RNG, the fleet, and per-tick arrival counts for placement strategies."""

    name = ""

    def __init__(self, fleet: Fleet, seed: int) -> None:
        self.fleet = fleet
        self.rng = random.Random(seed)
        self.n = len(fleet.workers)

    def route(self, rid: int, adapter: int) -> None:
        self.fleet.submit(self.pick(adapter), rid)

    def pick(self, adapter: int) -> int:
        raise NotImplementedError


class RandomRouting(Strategy):
    name = "random"

    def pick(self, adapter: int) -> int:
        return self.rng.randrange(self.n)


class RoundRobin(Strategy):
    name = "round-robin"

    def __init__(self, fleet: Fleet, seed: int) -> None:
        super().__init__(fleet, seed)
        self.next = 0

    def pick(self, adapter: int) -> int:
        w = self.next
        self.next = (w + 1) % self.n
        return w


def _least(workers: list[WorkerState]) -> int:
    return min(workers, key=lambda ws: ws.inflight).index


class LeastOutstanding(Strategy):
    name = "least-outstanding"

    def pick(self, adapter: int) -> int:
        return _least(self.fleet.workers)


class LoraAffinity(Strategy):
    """GIE / llm-d: score 1.0 where the adapter runs, 0.8 with a free slot, 0.6 where it waits, else 0;
    the best score wins, least queue among equals."""

    name = "lora-affinity"

    def pick(self, adapter: int) -> int:
        max_loras = self.fleet.params.max_loras
        best, best_key = 0, (-1.0, 0)
        for ws in self.fleet.workers:
            if adapter in ws.running:
                score = 1.0
            elif len(ws.running) + len(ws.waiting) < max_loras:
                score = 0.8
            elif adapter in ws.waiting:
                score = 0.6
            else:
                score = 0.0
            key = (score, -ws.inflight)
            if key > best_key:
                best, best_key = ws.index, key
        return best


class _Ranked(Strategy):
    """Strategies that need each adapter's first HRW worker, computed once per adapter on first use
    (against worker keys hashed once: at 1,000 workers a cold fleet asks for thousands of them)."""

    def __init__(self, fleet: Fleet, seed: int, slots: int) -> None:
        super().__init__(fleet, seed)
        self.pool = [Worker(id=f"w{i}", base_model=BASE, slots=slots) for i in range(self.n)]
        self.index = {w.id: i for i, w in enumerate(self.pool)}
        self.catalog = [Adapter(name=a, base_model=BASE) for a in fleet.names]
        self.adapter_index = {a: i for i, a in enumerate(fleet.names)}
        self._top: dict[int, list[int]] = {}
        ids = [w.id for w in self.pool]
        self._lanes = hrw.worker_lanes(hrw.keys(ids))
        self._weights = np.array([w.weight for w in self.pool])
        self._id_order = np.argsort(np.argsort(np.array(ids, dtype=object), kind="stable"), kind="stable")

    def top_hrw(self, adapter: int) -> list[int]:
        """The indices of `hrw.rank_workers(adapter, pool)[:TOP]`."""
        top = self._top.get(adapter)
        if top is None:
            states = hrw.adapter_states(hrw.keys([self.fleet.names[adapter]]))
            scores = hrw.pair_scores(states, self._lanes, self._weights)[0]
            top = self._top[adapter] = hrw.order(scores, self._id_order)[:TOP].tolist()
        return top

    def first_hrw(self, adapter: int) -> int:
        return self.top_hrw(adapter)[0]


class ConsistentHash(_Ranked):
    """One replica per adapter: its first rendezvous-hash worker (vllm-router's session hashing, keyed on the model)."""

    name = "consistent-hash"

    def pick(self, adapter: int) -> int:
        return self.first_hrw(adapter)


class _Placed(_Ranked):
    """Strategies that re-place every tick from the arrival rates measured over the last tick."""

    def __init__(self, fleet: Fleet, seed: int, control: ControlLoop, slots: int) -> None:
        super().__init__(fleet, seed, slots)
        self.control = control
        self.arrivals = np.zeros(len(fleet.names), dtype=np.int64)
        self.sets: list[list[WorkerState]] = [[] for _ in fleet.names]
        self.placement = Placement()
        self.churn = 0
        fleet.every(control.tick_s, control.tick_s, self.tick)

    def tick(self, now: float) -> None:
        arrivals = self.arrivals
        seen = np.flatnonzero(arrivals)
        names, tick_s = self.fleet.names, self.control.tick_s
        measured = {names[a]: c / tick_s for a, c in zip(seen.tolist(), arrivals[seen].tolist())}
        arrivals[:] = 0
        placement = self.place(measured)
        workers, previous, positions = self.fleet.workers, self.placement.replica_sets, self.index
        for name, rs in placement.replica_sets.items():
            old = previous.get(name)
            if old is not None and old.workers == rs.workers:
                continue
            if old is not None:
                self.churn += sum(1 for w in rs.workers if w not in old.workers)
            self.sets[self.adapter_index[name]] = [workers[positions[w]] for w in rs.workers]
        self.placement = placement

    def place(self, measured: dict[str, float]) -> Placement:
        raise NotImplementedError


class DynamoHrw(_Placed):
    """Dynamo's relative sizing + slot-aware HRW + scale-down cooldown; routes within the set, loads nothing.
    Its slots are `max_loras`, as Dynamo counts them."""

    name = "dynamo-hrw"

    def __init__(self, fleet: Fleet, seed: int, control: ControlLoop) -> None:
        super().__init__(fleet, seed, control, fleet.params.max_loras)
        self.dynamo = DynamoStrategy()

    def place(self, measured: dict[str, float]) -> Placement:
        return self.dynamo.step(self.pool, self.catalog, measured)

    def pick(self, adapter: int) -> int:
        self.arrivals[adapter] += 1
        candidates = self.sets[adapter]
        if not candidates:
            return _least(self.fleet.workers)
        return power_of_two(candidates, self.rng).index


class LoraRouter(_Placed):
    """The allocator's placement, the reconciler's make-before-break actions, slot-aware power of two
    among holders. A worker's placement slots are the adapters it keeps loaded (vLLM's host LRU,
    `max_cpu_loras`); the engine swaps the held ones through its `max_loras` GPU slots, and the router
    counts adapters in flight per worker to send a request where its adapter can join the batch."""

    name = "lora-router"

    def __init__(self, fleet: Fleet, seed: int, control: ControlLoop, config: ReplicaConfig) -> None:
        super().__init__(fleet, seed, control, fleet.params.host_slots)
        self.config = config
        self.ours = OursStrategy(config, control.tick_s)
        self.round_due = False
        self.desired: plan.DesiredIndex | None = None
        """The placement indexed once for the many plan rounds against it."""
        self.views: list[tuple[int, frozenset[str], frozenset[str]]] = [(-1, frozenset(), frozenset())] * self.n
        """Per worker: (its `changes`, held names, loading names) as of the last plan round."""
        fleet.on_loaded = self.holdings_changed

    def holdings_changed(self) -> None:
        if not self.round_due:
            self.round_due = True
            self.fleet.at(self.fleet.now + self.control.listing_s, self.reconcile)

    def place(self, measured: dict[str, float]) -> Placement:
        names = self.fleet.names
        placement = self.ours.step(self.pool, self.catalog, measured,
                                   {names[a]: float(c) for a, c in enumerate(self.fleet.inflight) if c})
        self.fleet.at(self.fleet.now + self.control.reconcile_s, self.reconcile)
        return placement

    def reconcile(self, now: float) -> None:
        self.round_due = False
        fleet = self.fleet
        names, views = fleet.names, self.views
        for i, ws in enumerate(fleet.workers):
            if views[i][0] != ws.changes:
                views[i] = (ws.changes, frozenset([names[a] for a in ws.held]),
                            frozenset([names[a] for a in ws.loading]))
        holdings = {w.id: v[1] for w, v in zip(self.pool, views)}
        loading = {w.id: v[2] for w, v in zip(self.pool, views)}
        if self.desired is None or self.desired.placement is not self.placement:
            self.desired = plan.DesiredIndex(self.placement)
        for action in plan.plan_actions(self.desired, holdings, loading, self.config.plan):
            w, a = self.index[action.worker], self.adapter_index[action.adapter]
            if action.kind == "load":
                fleet.load(w, a)
            else:
                fleet.unload(w, a)

    def route(self, rid: int, adapter: int) -> None:
        """A holder in the replica set (any holder while none in the set has it yet, as the router does)
        with room in its batch for the adapter (a sequence and a GPU LoRA slot); when none has, the
        adapter's best-ranked worker that has (loading it there if need be); when no worker has, the
        holders' queue."""
        self.arrivals[adapter] += 1
        fleet = self.fleet
        holders = [ws for ws in self.sets[adapter] if adapter in ws.held] or fleet.holders[adapter]
        chosen = pick_with_room(holders, adapter, self.rng)
        if chosen is None:
            chosen = first_with_room(self.ranked(adapter), adapter)
        if chosen is None:
            chosen = power_of_two(holders, self.rng) if holders else fleet.workers[self.first_hrw(adapter)]
        if adapter in chosen.held:
            fleet.submit(chosen.index, rid)
        else:
            fleet.wait(chosen.index, rid, adapter)

    def ranked(self, adapter: int) -> Iterator[WorkerState]:
        """The adapter's HRW order as far as the placement's rankings keep it (our own top before the first placement)."""
        rankings, workers = self.ours.planner.rankings, self.fleet.workers
        row = rankings.rows.get(self.fleet.names[adapter])
        if row is None:
            for i in self.top_hrw(adapter):
                yield workers[i]
            return
        ids, index = rankings.ids, self.index
        for i in row.idx:
            yield workers[index[ids[i]]]


Factory = Callable[[Fleet, int, ControlLoop, ReplicaConfig], Strategy]

STRATEGIES: dict[str, Factory] = {
    "random": lambda f, s, c, r: RandomRouting(f, s),
    "round-robin": lambda f, s, c, r: RoundRobin(f, s),
    "least-outstanding": lambda f, s, c, r: LeastOutstanding(f, s),
    "lora-affinity": lambda f, s, c, r: LoraAffinity(f, s),
    "consistent-hash": lambda f, s, c, r: ConsistentHash(f, s, 1),
    "dynamo-hrw": lambda f, s, c, r: DynamoHrw(f, s, c),
    "lora-router": lambda f, s, c, r: LoraRouter(f, s, c, r),
}
