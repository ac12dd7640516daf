"""The plan: the desired placement minus what workers hold, as a bounded list of actions.

Make before break: loads come first, and an adapter is unloaded from a worker
the placement dropped only once the adapter's desired workers hold it (as many
as the placement asks for, or as are available) — so a request always finds a
holder, and the last holder of a wanted adapter is never unloaded. Adapters
no longer in the placement at all (removed from the catalog) and adapters the
placement wants nowhere (min_replicas 0, idle) are unloaded freely.

Budgets keep a tick from stampeding the fleet: at most `loads_per_worker`
loads in flight per worker (loads already running count) and at most
`actions_per_tick` actions in all. Order is deterministic: loads by the demand
each adapter puts on every worker that holds it now, demand / (1 + holders),
largest first (so an adapter held nowhere goes before a held one of equal
demand), then name and the worker's rank in the replica set; then unloads by
worker and adapter. Why per holder: when a whole fleet starts, thousands of
tail adapters are held nowhere, and putting them all first kept a hot
adapter's new replicas waiting for seconds while its one holder queued
thousands of requests; a tail adapter's rare request can cold-start meanwhile.
"""

from __future__ import annotations

from collections.abc import Mapping

from allocator.config import PlanBudget
from allocator.model import Action, Demand, Placement

_NOTHING: frozenset[str] = frozenset()


class DesiredIndex:
    """A placement indexed for plan rounds: per worker the adapters desired there, and the adapters
    wanted but placed nowhere (slots ran out), whose holders are their only ones and stay.

    `plan_actions` builds one per call; a caller that plans many rounds against one placement (the
    reconciler after every finished load, the simulator) builds it once per placement and passes it.
    """

    __slots__ = ("on", "placement", "stuck")

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        on: dict[str, set[str]] = {}
        stuck: set[str] = set()
        for adapter, replica_set in placement.replica_sets.items():
            if replica_set.workers:
                for worker in replica_set.workers:
                    on.setdefault(worker, set()).add(adapter)
            elif replica_set.replicas:
                stuck.add(adapter)
        self.on = {worker: frozenset(adapters) for worker, adapters in on.items()}
        self.stuck = frozenset(stuck)


def plan_actions(desired: Placement | DesiredIndex, holdings: Mapping[str, frozenset[str]],
                 loading: Mapping[str, frozenset[str]], budget: PlanBudget,
                 demand: Mapping[str, Demand] | None = None) -> list[Action]:
    """Actions for this tick. `holdings`: worker -> adapters it holds now (its keys are the
    live workers); `loading`: worker -> adapters being loaded there right now; `demand`: the
    current demand that orders the loads (a router's estimates: the placement it reads carries
    none), else the demand the placement was computed with.

    Only the adapters that miss a desired worker are ordered, only holdings that could be
    unloaded are looked at, and holders are indexed for those alone; all three come from set
    operations per worker, so a round costs little more than the changes it finds.
    """
    index = desired if isinstance(desired, DesiredIndex) else DesiredIndex(desired)
    placement, on = index.placement, index.on
    lacking: set[str] = set()
    for worker, held in holdings.items():
        wanted = on.get(worker)
        if wanted:
            lacking.update(wanted.difference(held, loading.get(worker, _NOTHING)))
    outside = {worker: held.difference(on.get(worker, _NOTHING), index.stuck) for worker, held in holdings.items()}
    holders = _holders(holdings, lacking.union(*outside.values()))
    replica_sets = placement.replica_sets
    rps = ({a: replica_sets[a].demand_rps for a in lacking} if demand is None
           else {a: demand[a].rps if a in demand else 0.0 for a in lacking})
    missing = sorted(lacking, key=lambda a: (-rps[a] / (1 + len(holders.get(a, ()))), a))
    actions: list[Action] = []
    in_flight = {w: len(loading.get(w, _NOTHING)) for w in holdings}
    for adapter in missing:
        for worker in replica_sets[adapter].workers:
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
            if _may_unload(placement, adapter, worker, holdings, holders):
                actions.append(Action(kind="unload", worker=worker, adapter=adapter))
                holders[adapter].discard(worker)
    return actions


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
