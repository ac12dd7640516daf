"""The whole routing policy: given what the router knows, what to do next with one request.

`decide` answers Forward(worker), LoadThen(worker) or Reject(why), and nothing
else; the proxy executes the answer, reports the outcome to the state (and, on
a failed try, to `Attempts`), and asks again. The simulator calls the same
function on the same state type, so its figures describe this policy.

The policy, in order:
- The adapter's holders (its replica set's first, any holder while the set is
  loading: make before break), minus the workers this request failed on.
- None: a cold start, LoadThen on the adapter's best-ranked worker whose batch
  has room (else its first), in HRW order with the workers that have the source
  on disk first; unless the adapter is marked failed (every placed worker
  refused it) or no worker could take it. Concurrent first requests agree (the
  first one's request counts the adapter in flight there), and so do routers
  with the same view of the batches.
- A holder whose batch takes the request at once (router.core.picking), the
  one that likely has the prompt's prefix cached unless it is busier than
  the prefill saved is worth (router.core.prefix).
- None has room: the adapter's best-ranked worker with room (overflow): Forward
  when it holds the adapter, LoadThen when not. Every router ranks alike, so
  overflow loads of one adapter coalesce on one worker.
- No worker has room, or the overflow load failed: queue at the least busy
  holder (power of two choices).
- A request is forwarded at most `MAX_FORWARDS` times; a second try spends the
  retry budget, and a last try relays whatever the worker answers.
- A stream cut mid-way continues (router.core.continuation) as a new exchange
  by these same rules, without the worker that died.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from enum import Enum

import msgspec

from router.core.fleetstate import FleetState, WorkerState
from router.core.names import Target
from router.core.picking import first_with_room, pick_cached, pick_with_room, power_of_two
from router.core.records import AdapterFailure, AdapterRecord, adapter_path, cache_status, is_remote
from router.core.retrybudget import RetryBudget

MAX_FORWARDS = 2


class Via(Enum):
    """Why a worker was chosen: the proxy counts overflows by it."""

    BASE = "base"
    ROOM = "room"
    """A holder whose batch has room."""
    CACHED = "cached"
    """A holder whose batch has room and that likely has the prompt's prefix cached (router.core.prefix)."""
    OVERFLOW_HOLDER = "holder"
    """The best-ranked worker with room, already a holder (outside the replica set)."""
    OVERFLOW_LOADED = "loaded"
    """The best-ranked worker with room, after its overflow load."""
    QUEUED = "queued"


class Forward(msgspec.Struct, frozen=True):
    worker: str
    via: Via
    last_chance: bool
    """Relay whatever this worker answers: no other try follows."""
    retry: bool
    """A second try: it spends the retry budget."""


class Load(Enum):
    COLD_START = "cold_start"
    OVERFLOW = "overflow"


class LoadThen(msgspec.Struct, frozen=True):
    """Load the adapter on the worker (coalesced with any load of it there), then ask again."""

    worker: str
    why: Load


class Refusal(Enum):
    FAILED = "failed"
    """The adapter is marked failed: every worker placed for it refused it."""
    NO_WORKER = "no_worker"
    """No healthy worker can take it (base model, rank), or none serves the base model."""
    UNLOADABLE = "unloadable"
    """Every eligible worker refused this request's cold-start load."""
    EXHAUSTED = "exhausted"
    """Every try failed, or the tries are used up."""
    BUDGET = "budget"
    """A retry was due and the retry budget is spent."""
    GONE = "gone"
    """The adapter left the catalog while the request was on its way."""


class Reject(msgspec.Struct, frozen=True):
    refusal: Refusal
    message: str
    """For the client: never a path or a key, only names it already used."""


Decision = Forward | LoadThen | Reject


class Attempts(msgspec.Struct, frozen=True):
    """What happened to this request so far; each outcome is a new value (see the methods)."""

    forwards: int = 0
    failed: frozenset[str] = frozenset()
    """Workers not to try again. One that answered 404 for its adapter is not among them: a cold
    start may load the adapter there again."""
    loaded_on: frozenset[str] = frozenset()
    """Workers this request had the adapter loaded on, whatever came of it: never asked twice, so the
    exchange ends (each turn adds a forward, a load or the overflow's end, all bounded)."""
    load_failures: int = 0
    overflow_done: bool = False
    """An overflow load failed or outlasted its wait: queue at a holder instead."""
    reason: str = "no holder"
    """Why the last try failed, for the client's error."""
    migrations: int = 0
    """Times the answer's stream was cut and continued on another worker."""

    def forward_failed(self, worker: str, reason: str, *, retry_there: bool = False) -> Attempts:
        failed = self.failed if retry_there else self.failed | {worker}
        return msgspec.structs.replace(self, forwards=self.forwards + 1, failed=failed, reason=reason)

    def stream_cut(self, worker: str) -> Attempts:
        """The worker died mid-stream and the answer continues elsewhere: a fresh exchange (its tries, not a
        retry that spends the budget), the dead worker excluded."""
        return msgspec.structs.replace(self, forwards=0, failed=self.failed | {worker}, reason="stream cut",
                                       migrations=self.migrations + 1)

    def loaded(self, worker: str) -> Attempts:
        return msgspec.structs.replace(self, loaded_on=self.loaded_on | {worker})

    def load_failed(self, worker: str, why: Load) -> Attempts:
        return msgspec.structs.replace(self, loaded_on=self.loaded_on | {worker}, load_failures=self.load_failures + 1,
                                       overflow_done=self.overflow_done or why is Load.OVERFLOW)


FIRST = Attempts()


def decide(target: Target, state: FleetState, tried: Attempts, budget: RetryBudget,
           rng: random.Random, prompt: Sequence[int] = ()) -> Decision:
    """`prompt`: the request's prompt blocks (router.core.prefix.prompt_blocks), () when not known."""
    adapter = target.adapter
    if adapter is None:
        return _base(target, state, tried, budget, rng)
    failed = tried.failed
    holders = state.routable_holders(adapter)
    if failed:
        holders = [v for v in holders if v.record.id not in failed]
    if not holders:
        return _cold_start(target, adapter, state, tried)
    if tried.forwards >= MAX_FORWARDS:
        return _exhausted(target, tried)
    retry = tried.forwards > 0
    if retry and not budget.may_spend():
        return Reject(Refusal.BUDGET, f"No worker answered for model '{target.model}' (retry budget exhausted).")
    last = tried.forwards + 1 >= MAX_FORWARDS
    rules = state.prefix_rules
    if prompt and rules.index_blocks:
        cached = pick_cached(holders, adapter, prompt, rules, rng)
        if cached is not None:
            return Forward(cached[0].record.id, Via.CACHED if cached[1] else Via.ROOM, last, retry)
    else:
        chosen = pick_with_room(holders, adapter, rng)
        if chosen is not None:
            return Forward(chosen.record.id, Via.ROOM, last, retry)
    if not tried.overflow_done:
        ranked = [v for v in state.ranked(adapter) if v.record.id not in failed and adapter not in v.draining]
        spare = first_with_room(ranked, adapter)
        if spare is not None:
            if adapter in spare.holds:
                return Forward(spare.record.id, Via.OVERFLOW_HOLDER, last, retry)
            if spare.record.id not in tried.loaded_on:
                return LoadThen(spare.record.id, Load.OVERFLOW)
    return Forward(power_of_two(holders, rng).record.id, Via.QUEUED, last, retry)


def _base(target: Target, state: FleetState, tried: Attempts, budget: RetryBudget, rng: random.Random) -> Decision:
    views = state.base_workers(target.base or target.model)
    if tried.failed:
        views = [v for v in views if v.record.id not in tried.failed]
    if not views:
        return _exhausted(target, tried) if tried.forwards else Reject(
            Refusal.NO_WORKER, f"No healthy worker serves model '{target.model}'.")
    if tried.forwards >= MAX_FORWARDS:
        return _exhausted(target, tried)
    retry = tried.forwards > 0
    if retry and not budget.may_spend():
        return Reject(Refusal.BUDGET, f"No worker answered for model '{target.model}' (retry budget exhausted).")
    last = tried.forwards + 1 >= MAX_FORWARDS or len(views) == 1
    return Forward(power_of_two(views, rng).record.id, Via.BASE, last, retry)


def _cold_start(target: Target, adapter: str, state: FleetState, tried: Attempts) -> Decision:
    record = state.catalog.get(adapter)
    if record is None:
        return Reject(Refusal.GONE, f"The model '{target.model}' was removed.")
    if record.failed is not None:
        return Reject(Refusal.FAILED, failed_message(record, record.failed))
    skip = tried.failed | tried.loaded_on
    candidates = [v for v in cached_first(state.ranked(adapter), record) if v.record.id not in skip]
    if candidates:
        return LoadThen((first_with_room(candidates, adapter) or candidates[0]).record.id, Load.COLD_START)
    if tried.forwards:
        return _exhausted(target, tried)
    if tried.load_failures:
        return Reject(Refusal.UNLOADABLE, f"No worker could load adapter '{adapter}'.")
    return Reject(Refusal.NO_WORKER, why_none(adapter, record.base_model, state))


def _exhausted(target: Target, tried: Attempts) -> Reject:
    return Reject(Refusal.EXHAUSTED, f"No worker answered for model '{target.model}' ({tried.reason}).")


def cached_first(ranked: list[WorkerState], adapter: AdapterRecord) -> list[WorkerState]:
    """`ranked` (in HRW order) with the workers that have the adapter on disk first: they load in about a
    second where the others must download first; the order is otherwise kept, the same on every router."""
    if not is_remote(adapter.source):
        return ranked
    return sorted(ranked, key=lambda v: cache_status(v.record.cache_dir, v.record.cached, v.record.fetch_failures,
                                                     adapter.source)[0] != "ready")


def why_none(adapter: str, base: str, state: FleetState) -> str:
    """Why no worker was even tried: the client (and its operator) should not go looking at the adapter."""
    serving = [v for v in state.workers.values() if base in v.record.base_models]
    if not serving:
        return f"No worker serves base model '{base}', which adapter '{adapter}' is for."
    return (f"No healthy worker for adapter '{adapter}' right now: all {len(serving)} workers serving "
            f"'{base}' are out of rotation or cannot take its rank.")


def failed_message(record: AdapterRecord, failed: AdapterFailure) -> str:
    """The client's word on an adapter marked failed; the adapter's server path is never shown."""
    detail = failed.detail.replace(record.source, "<path>").replace(adapter_path(record.source), "<path>")
    return (f"Adapter '{record.name}' cannot be served: every worker it was placed on refused to load it "
            f"({failed.reason}: {detail}). The router retries the load in the background.")
