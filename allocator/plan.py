"""The plan: the desired placement minus what workers hold, as a bounded list of actions.

Make before break: loads come first, and an adapter is unloaded from a worker
the placement dropped only once the adapter's desired workers hold it (as many
as the placement asks for, or as are available) — so a request always finds a
holder, and the last holder of a wanted adapter is never unloaded. Adapters
no longer in the placement at all (removed from the catalog) and adapters the
placement wants nowhere (min_replicas 0, idle) are unloaded freely.

Budgets keep a tick from stampeding the fleet: at most `loads_per_worker`
loads in flight per worker (loads already running count) and at most
`actions_per_tick` actions in all. Order is deterministic: loads of adapters
with no holder at all first, then by demand (hottest first), name and the
worker's rank in the replica set; then unloads by worker and adapter.
"""

from __future__ import annotations

from collections.abc import Mapping

from allocator.config import PlanBudget
from allocator.model import Action, Placement, ReplicaSet

_NOTHING: frozenset[str] = frozenset()


def plan_actions(desired: Placement, holdings: Mapping[str, frozenset[str]],
                 loading: Mapping[str, frozenset[str]], budget: PlanBudget) -> list[Action]:
    """Actions for this tick. `holdings`: worker -> adapters it holds now (its keys are the
    live workers); `loading`: worker -> adapters being loaded there right now.

    Only the adapters that miss a desired worker are ordered, only holdings that could be
    unloaded are looked at, and holders are indexed for those alone: in a settled fleet they are
    few, and the reconciler runs this after every finished load.
    """
    missing, desired_on, stuck = _survey(desired.replica_sets, holdings, loading)
    outside = {worker: held.difference(desired_on.get(worker, _NOTHING), stuck) for worker, held in holdings.items()}
    holders = _holders(holdings, {adapter for adapter, _ in missing}.union(*outside.values()))
    actions: list[Action] = []
    in_flight = {w: len(loading.get(w, _NOTHING)) for w in holdings}
    missing.sort(key=lambda item: (bool(holders.get(item[0])), -item[1].demand_rps, item[0]))
    for adapter, replica_set in missing:
        for worker in replica_set.workers:
            if len(actions) >= budget.actions_per_tick:
                return actions
            if (worker in holdings and adapter not in holdings[worker]
                    and adapter not in loading.get(worker, _NOTHING)
                    and in_flight[worker] < budget.loads_per_worker):
                actions.append(Action(kind="load", worker=worker, adapter=adapter))
                in_flight[worker] += 1
    for worker in sorted(holdings):
        for adapter in sorted(outside[worker]):
            if len(actions) >= budget.actions_per_tick:
                return actions
            if _may_unload(desired, adapter, worker, holdings, holders):
                actions.append(Action(kind="unload", worker=worker, adapter=adapter))
                holders[adapter].discard(worker)
    return actions


def _survey(replica_sets: Mapping[str, ReplicaSet], holdings: Mapping[str, frozenset[str]],
            loading: Mapping[str, frozenset[str]]) -> tuple[list[tuple[str, ReplicaSet]], dict[str, set[str]],
                                                            set[str]]:
    """One pass over the placement: the adapters with a live desired worker that neither holds nor is
    loading them; per worker, the adapters desired there; and the adapters wanted but placed nowhere
    (slots ran out), whose holders are the only ones and stay (`_may_unload` would keep them)."""
    missing = []
    desired_on: dict[str, set[str]] = {}
    stuck: set[str] = set()
    held_by, loading_on = holdings.get, loading.get
    for adapter, replica_set in replica_sets.items():
        workers = replica_set.workers
        if not workers:
            if replica_set.replicas:
                stuck.add(adapter)
            continue
        lacking = False
        for worker in workers:
            desired_on.setdefault(worker, set()).add(adapter)
            held = held_by(worker)
            if held is not None and adapter not in held and adapter not in loading_on(worker, _NOTHING):
                lacking = True
        if lacking:
            missing.append((adapter, replica_set))
    return missing, desired_on, stuck


def _holders(holdings: Mapping[str, frozenset[str]], adapters: set[str]) -> dict[str, set[str]]:
    """Which workers hold each of `adapters` (the set intersection walks the smaller side)."""
    holders: dict[str, set[str]] = {}
    for worker, held in holdings.items():
        for adapter in adapters.intersection(held):
            holders.setdefault(adapter, set()).add(worker)
    return holders


def _may_unload(desired: Placement, adapter: str, worker: str,
                holdings: Mapping[str, frozenset[str]], holders: Mapping[str, set[str]]) -> bool:
    replica_set = desired.replica_sets.get(adapter)
    if replica_set is None:
        return True
    if worker in replica_set.workers:
        return False
    if replica_set.replicas == 0 and not replica_set.workers:
        return True
    available = [w for w in replica_set.workers if w in holdings]
    in_place = sum(1 for w in available if w in holders[adapter])
    return in_place >= max(1, min(replica_set.replicas, len(available)))
