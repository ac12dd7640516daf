"""Routing strategies side by side, each a `route(rid, adapter)` over a `SimFleet`.

Strategies without placement submit wherever they pick; the engine then reads
the adapter from disk into its host LRU and swaps it into a GPU slot, evicting
least recently used ones — what vLLM's filesystem resolver does. `dynamo-hrw`
narrows routing to Dynamo's replica sets (bench/baselines_placement.py) but,
like Dynamo, loads nothing itself. `lora-router` is the router's own code:
the allocator's placement on the control loop's clock (tick, reconcile, load
latency), the reconciler's plan round, and router.core.routing.decide for
every request, on the router's own FleetState.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from allocator import hrw, plan
from allocator.config import ReplicaConfig
from allocator.model import Adapter, Placement, Worker
from bench.baselines_placement import DynamoStrategy, OursStrategy
from bench.sim.fleet import SimFleet, SimWorker
from router.core import routing
from router.core.events import (
    CatalogChanged,
    DrainCancelled,
    DrainStarted,
    LoadFinished,
    MembershipChanged,
    PlacementChanged,
    RequestBegun,
    RequestEnded,
    Unloaded,
)
from router.core.fleetstate import FleetState
from router.core.names import Target
from router.core.picking import power_of_two
from router.core.prefix import PrefixRules
from router.core.reconcile_plan import idle_grace_s, plan_round
from router.core.records import AdapterRecord, WorkerRecord
from router.core.retrybudget import RetryBudget

BASE = "base"
TOP = 32
"""How far an adapter's HRW ranking is kept (as far as the allocator's rankings keep theirs)."""


class ControlTiming:
    """The router's control-loop timing (router/reconciler.py): a placement every `tick_s`; a plan round
    `reconcile_s` after each placement (propagation through etcd) and `listing_s` after each finished load
    (the worker's /v1/models shows it, the holdings changed); every load takes the engine's load cost."""

    def __init__(self, tick_s: float = 2.0, reconcile_s: float = 0.5, listing_s: float = 0.05) -> None:
        self.tick_s, self.reconcile_s, self.listing_s = tick_s, reconcile_s, listing_s


class Strategy:
    """Base: a seeded RNG, the fleet, and per-tick arrival counts for placement strategies."""

    name = ""

    def __init__(self, fleet: SimFleet, seed: int) -> None:
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

    def __init__(self, fleet: SimFleet, seed: int) -> None:
        super().__init__(fleet, seed)
        self.next = 0

    def pick(self, adapter: int) -> int:
        w = self.next
        self.next = (w + 1) % self.n
        return w


def _least(workers: list[SimWorker]) -> int:
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

    def __init__(self, fleet: SimFleet, seed: int, slots: int) -> None:
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

    def __init__(self, fleet: SimFleet, seed: int, control: ControlTiming, slots: int) -> None:
        super().__init__(fleet, seed, slots)
        self.control = control
        self.arrivals = np.zeros(len(fleet.names), dtype=np.int64)
        self.sets: list[list[SimWorker]] = [[] for _ in fleet.names]
        self.placement = Placement()
        self.churn = 0
        fleet.every(control.tick_s, control.tick_s, self.tick)

    def tick(self, now: float) -> None:
        arrivals = self.arrivals
        seen = np.flatnonzero(arrivals)
        names, tick_s = self.fleet.names, self.control.tick_s
        measured = {names[a]: c / tick_s for a, c in zip(seen.tolist(), arrivals[seen].tolist(), strict=True)}
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

    def __init__(self, fleet: SimFleet, seed: int, control: ControlTiming) -> None:
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
    """The router itself: the allocator's placement on the control loop's clock, the reconciler's plan
    round (router.core.reconcile_plan.plan_round), and every request routed by router.core.routing.decide on a
    router.core.fleetstate.FleetState fed the same events the router's edges report. What stays here is
    what the simulator does instead of I/O: a LoadThen starts the engine's load and the request waits for
    it on that worker (the router, asking again once it is loaded, finds that worker the holder with
    room), and a drain ends as soon as nothing of the adapter runs on the worker. A worker's placement
    slots are the adapters it keeps loaded (vLLM's host LRU, `max_cpu_loras`); the engine swaps them
    through its `max_loras` GPU slots."""

    name = "lora-router"

    def __init__(self, fleet: SimFleet, seed: int, control: ControlTiming, config: ReplicaConfig) -> None:
        super().__init__(fleet, seed, control, fleet.params.host_slots)
        self.config = config
        self.ours = OursStrategy(config, control.tick_s)
        self.round_due = False
        self.desired: plan.DesiredIndex | None = None
        """The placement indexed once for the many plan rounds against it."""
        params = fleet.params
        self.state = FleetState(prefix=PrefixRules(index_blocks=params.kv_blocks, block_tokens=params.block_tokens))
        self.state.apply(MembershipChanged({w.id: WorkerRecord(
            id=w.id, url=f"http://{w.id}.sim:80", base_models=(BASE,), slots=w.slots, max_loras=params.max_loras,
            max_num_seqs=params.max_num_seqs) for w in self.pool}))
        self.state.apply(CatalogChanged({a.name: AdapterRecord(name=a.name, source=f"/adapters/{a.name}",
                                                               base_model=BASE) for a in self.catalog}))
        self.targets = [Target(base=BASE, adapter=name, model=name) for name in fleet.names]
        self.budget = RetryBudget(0.0)
        """Never spent: simulated workers do not fail, so no request is tried twice."""
        self.idle_since: dict[tuple[str, str], float] = {}
        fleet.on_loaded = self.loaded
        fleet.on_finished = self.finished

    def loaded(self, w: int, adapter: int) -> None:
        self.state.apply(LoadFinished(self.pool[w].id, self.fleet.names[adapter]))
        if not self.round_due:
            self.round_due = True
            self.fleet.at(self.fleet.now + self.control.listing_s, self.reconcile)

    def finished(self, w: int, adapters: list[int]) -> None:
        worker, names, apply = self.pool[w].id, self.fleet.names, self.state.apply
        for a in adapters:
            apply(RequestEnded(worker, names[a]))
        view = self.state.workers[worker]
        if view.draining:
            for a in adapters:
                self._drained(w, names[a])

    def _drained(self, w: int, name: str) -> None:
        """Unload a draining adapter once nothing of it runs on the worker (the reconciler polls for that
        every 50 ms, a blink at the simulator's scale)."""
        wid = self.pool[w].id
        view = self.state.workers[wid]
        if name in view.draining and name not in view.adapter_inflight \
                and self.fleet.unload(w, self.adapter_index[name]):
            self.state.apply(Unloaded(wid, name))

    def place(self, measured: dict[str, float]) -> Placement:
        names = self.fleet.names
        placement = self.ours.step(self.pool, self.catalog, measured,
                                   {names[a]: float(c) for a, c in enumerate(self.fleet.inflight) if c})
        self.state.apply(PlacementChanged(placement))
        self.fleet.at(self.fleet.now + self.control.reconcile_s, self.reconcile)
        return placement

    def reconcile(self, now: float) -> None:
        self.round_due = False
        fleet, state, names = self.fleet, self.state, self.fleet.names
        if self.desired is None or self.desired.placement is not state.placement:
            self.desired = plan.DesiredIndex(state.placement)
        holdings = {wid: frozenset(v.holds) for wid, v in state.workers.items()}
        loading = {w.id: frozenset(names[a] for a in ws.loading)
                   for w, ws in zip(self.pool, fleet.workers, strict=True) if ws.loading}
        control = self.control
        work = plan_round(self.desired, holdings, loading, self.config.plan, self.ours.estimates, state.catalog,
                          state.catalog, self.idle_since, now, idle_grace_s(control.tick_s, control.reconcile_s))
        for wid, todo in work.items():
            w = self.index[wid]
            for name in todo.loads:
                fleet.load(w, self.adapter_index[name])
            for name in todo.unloads:
                state.apply(DrainStarted(wid, name))
        for wid, view in state.workers.items():
            desired = self.desired.on.get(wid, frozenset())
            for name in list(view.draining):
                if name in desired:
                    state.apply(DrainCancelled(wid, name))
                else:
                    self._drained(self.index[wid], name)

    def route(self, rid: int, adapter: int) -> None:
        self.arrivals[adapter] += 1
        prompt = self.fleet.prompt(rid)
        decision = routing.decide(self.targets[adapter], self.state, routing.FIRST, self.budget, self.rng, prompt)
        match decision:
            case routing.Forward(worker=worker):
                self.state.apply(RequestBegun(worker, self.fleet.names[adapter], prompt))
                self.fleet.submit(self.index[worker], rid)
            case routing.LoadThen(worker=worker):
                self.state.apply(RequestBegun(worker, self.fleet.names[adapter], prompt))
                self.fleet.wait(self.index[worker], rid, adapter)
            case routing.Reject(message=message):
                raise RuntimeError(f"the simulated router refused a request: {message}")


# The prefix-cache baselines subclass the classes above: imported as a module once those exist, whichever
# of the two modules is imported first, and looked up only when a factory runs.
from bench.sim import cache_baselines  # noqa: E402

Factory = Callable[[SimFleet, int, ControlTiming, ReplicaConfig], Strategy]

STRATEGIES: dict[str, Factory] = {
    "random": lambda f, s, c, r: RandomRouting(f, s),
    "round-robin": lambda f, s, c, r: RoundRobin(f, s),
    "least-outstanding": lambda f, s, c, r: LeastOutstanding(f, s),
    "lora-affinity": lambda f, s, c, r: LoraAffinity(f, s),
    "consistent-hash": lambda f, s, c, r: ConsistentHash(f, s, 1),
    "dynamo-hrw": lambda f, s, c, r: DynamoHrw(f, s, c),
    "lora-router": lambda f, s, c, r: LoraRouter(f, s, c, r),
    "cache-aware": lambda f, s, c, r: cache_baselines.CacheAware(f, s),
    "cache-aware-sglang": lambda f, s, c, r: cache_baselines.CacheAware(f, s, low_match="smallest-tree"),
    "llm-d": lambda f, s, c, r: cache_baselines.LlmD(f, s),
    "session-hash": lambda f, s, c, r: cache_baselines.SessionHash(f, s),
}
