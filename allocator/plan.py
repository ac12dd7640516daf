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
from allocator.model import Action, Placement

_NOTHING: frozenset[str] = frozenset()


def plan_actions(desired: Placement, holdings: Mapping[str, frozenset[str]],
                 loading: Mapping[str, frozenset[str]], budget: PlanBudget) -> list[Action]:
    """Actions for this tick. `holdings`: worker -> adapters it holds now (its keys are the
    live workers); `loading`: worker -> adapters being loaded there right now."""
    holders: dict[str, set[str]] = {}
    for worker, held in holdings.items():
        for adapter in held:
            holders.setdefault(adapter, set()).add(worker)
    actions: list[Action] = []
    in_flight = {w: len(loading.get(w, _NOTHING)) for w in holdings}
    wanted = sorted(desired.replica_sets.items(),
                    key=lambda item: (bool(holders.get(item[0])), -item[1].demand_rps, item[0]))
    for adapter, replica_set in wanted:
        for worker in replica_set.workers:
            if len(actions) >= budget.actions_per_tick:
                return actions
            if (worker in holdings and adapter not in holdings[worker]
                    and adapter not in loading.get(worker, _NOTHING)
                    and in_flight[worker] < budget.loads_per_worker):
                actions.append(Action(kind="load", worker=worker, adapter=adapter))
                in_flight[worker] += 1
    for worker in sorted(holdings):
        for adapter in sorted(holdings[worker]):
            if len(actions) >= budget.actions_per_tick:
                return actions
            if _may_unload(desired, adapter, worker, holdings, holders):
                actions.append(Action(kind="unload", worker=worker, adapter=adapter))
                holders[adapter].discard(worker)
    return actions


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
