"""plan_actions: make before break, never the last holder, budgets, deterministic order."""

from __future__ import annotations

from allocator.config import PlanBudget
from allocator.model import Action, Placement, ReplicaSet
from allocator.plan import plan_actions

WIDE = PlanBudget(loads_per_worker=10, actions_per_tick=100)


def placement(**sets: tuple[tuple[str, ...], int, float]) -> Placement:
    return Placement(replica_sets={a: ReplicaSet(workers=ws, replicas=r, demand_rps=rps)
                                   for a, (ws, r, rps) in sets.items()})


def held(**workers: set[str]) -> dict[str, frozenset[str]]:
    return {w: frozenset(a) for w, a in workers.items()}


def test_moving_an_adapter_loads_first_and_unloads_only_after_the_new_holder_has_it() -> None:
    desired = placement(x=(("w2",), 1, 5.0))
    first = plan_actions(desired, held(w1={"x"}, w2=set()), {}, WIDE)
    assert first == [Action(kind="load", worker="w2", adapter="x")]
    while_loading = plan_actions(desired, held(w1={"x"}, w2=set()), {"w2": frozenset({"x"})}, WIDE)
    assert while_loading == []
    done = plan_actions(desired, held(w1={"x"}, w2={"x"}), {}, WIDE)
    assert done == [Action(kind="unload", worker="w1", adapter="x")]


def test_unload_waits_until_all_available_desired_workers_hold_it() -> None:
    desired = placement(x=(("w2", "w3"), 2, 5.0))
    partial = plan_actions(desired, held(w1={"x"}, w2={"x"}, w3=set()), {}, WIDE)
    assert partial == [Action(kind="load", worker="w3", adapter="x")]
    # w3 is gone: the one available desired worker holding it is enough
    gone = plan_actions(desired, held(w1={"x"}, w2={"x"}), {}, WIDE)
    assert gone == [Action(kind="unload", worker="w1", adapter="x")]


def test_the_last_holder_of_a_wanted_adapter_is_never_unloaded() -> None:
    desired = placement(x=(("w9",), 1, 5.0))  # its desired worker is not alive
    assert plan_actions(desired, held(w1={"x"}), {}, WIDE) == []


def test_adapters_out_of_the_catalog_or_wanted_nowhere_are_unloaded_freely() -> None:
    desired = placement(idle=((), 0, 0.0))
    actions = plan_actions(desired, held(w1={"idle", "deleted"}), {}, WIDE)
    assert actions == [Action(kind="unload", worker="w1", adapter="deleted"),
                       Action(kind="unload", worker="w1", adapter="idle")]


def test_load_budget_per_worker_counts_loads_already_running() -> None:
    desired = placement(a=(("w1",), 1, 1.0), b=(("w1",), 1, 2.0), c=(("w1",), 1, 3.0))
    budget = PlanBudget(loads_per_worker=2, actions_per_tick=100)
    assert plan_actions(desired, held(w1=set()), {}, budget) == [
        Action(kind="load", worker="w1", adapter="c"), Action(kind="load", worker="w1", adapter="b")]
    assert plan_actions(desired, held(w1=set()), {"w1": frozenset({"c"})}, budget) == [
        Action(kind="load", worker="w1", adapter="b")]


def test_actions_per_tick_caps_the_list_and_loads_of_unheld_adapters_come_first() -> None:
    desired = placement(hot=(("w1", "w2"), 2, 100.0), cold=(("w3",), 1, 0.1), new=(("w2",), 1, 0.0))
    actions = plan_actions(desired, held(w1={"hot"}, w2=set(), w3=set()), {}, PlanBudget(actions_per_tick=2))
    assert actions == [Action(kind="load", worker="w3", adapter="cold"),
                       Action(kind="load", worker="w2", adapter="new")]


def test_order_is_deterministic_whatever_the_input_order() -> None:
    desired = placement(**{f"a{i}": ((f"w{i % 3}", f"w{(i + 1) % 3}"), 2, float(i % 4)) for i in range(12)})
    holdings = {f"w{i}": frozenset({f"a{(i * 5) % 12}", "gone"}) for i in range(3)}
    forward = plan_actions(desired, holdings, {}, WIDE)
    backward = plan_actions(desired, dict(reversed(list(holdings.items()))), {}, WIDE)
    assert forward == backward
    kinds = [a.kind for a in forward]
    assert kinds == sorted(kinds)  # every load before any unload ("load" < "unload")
    assert sum(k == "unload" for k in kinds) == 3  # "gone" everywhere; wanted ones are all in place
