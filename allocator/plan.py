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
_NO_SET = ReplicaSet(workers=(), replicas=0)


def plan_actions(desired: Placement, holdings: Mapping[str, frozenset[str]],
                 loading: Mapping[str, frozenset[str]], budget: PlanBudget) -> list[Action]:
    """Actions for this tick. `holdings`: worker -> adapters it holds now (its keys are the
    live workers); `loading`: worker -> adapters being loaded there right now.

    Only the adapters that miss a desired worker are ordered, and only holdings that could be
    unloaded are looked at: in a settled fleet both are few, and the reconciler runs this after
    every finished load.
    """
    holders: dict[str, set[str]] = {}
    for worker, held in holdings.items():
        for adapter in held:
            holders.setdefault(adapter, set()).add(worker)
    actions: list[Action] = []
    in_flight = {w: len(loading.get(w, _NOTHING)) for w in holdings}
    replica_sets = desired.replica_sets
    missing = [(adapter, rs) for adapter, rs in replica_sets.items() if _misses(adapter, rs, holdings, loading)]
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
        for adapter in sorted(_outside(worker, holdings[worker], replica_sets)):
            if len(actions) >= budget.actions_per_tick:
                return actions
            if _may_unload(desired, adapter, worker, holdings, holders):
                actions.append(Action(kind="unload", worker=worker, adapter=adapter))
                holders[adapter].discard(worker)
    return actions


def _misses(adapter: str, replica_set: ReplicaSet, holdings: Mapping[str, frozenset[str]],
            loading: Mapping[str, frozenset[str]]) -> bool:
    """A live desired worker neither holds nor is loading the adapter."""
    for worker in replica_set.workers:
        held = holdings.get(worker)
        if held is not None and adapter not in held and adapter not in loading.get(worker, _NOTHING):
            return True
    return False


def _outside(worker: str, held: frozenset[str], replica_sets: Mapping[str, ReplicaSet]) -> list[str]:
    """The adapters `worker` holds that may be unloaded from it: not desired there, and not wanted
    with no worker found for it (such a holder is the only one; `_may_unload` would keep it)."""
    out = []
    for adapter in held:
        rs = replica_sets.get(adapter, _NO_SET)
        if worker not in rs.workers and (rs.workers or rs.replicas == 0):
            out.append(adapter)
    return out


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
