"""plan_actions: make before break, never the last holder, budgets, deterministic order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from allocator.config import PlanBudget
from allocator.model import Action, Placement, ReplicaSet
from allocator.plan import DesiredIndex, plan_actions

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


def test_actions_per_tick_caps_the_list_and_loads_go_by_demand_per_holder() -> None:
    """hot: 100 req/s on its one holder; cold: 0.1 on none; even: 2 req/s on none beats 4 on one holder."""
    desired = placement(hot=(("w1", "w2"), 2, 100.0), cold=(("w3",), 1, 0.1), even=(("w3",), 1, 2.0),
                        held_even=(("w1", "w3"), 2, 4.0))
    holdings = held(w1={"hot", "held_even"}, w2=set(), w3=set())
    actions = plan_actions(desired, holdings, {}, PlanBudget(loads_per_worker=3, actions_per_tick=3))
    assert actions == [Action(kind="load", worker="w2", adapter="hot"),
                       Action(kind="load", worker="w3", adapter="even"),
                       Action(kind="load", worker="w3", adapter="held_even")]
    assert plan_actions(desired, holdings, {}, PlanBudget(loads_per_worker=3, actions_per_tick=4))[-1] == Action(
        kind="load", worker="w3", adapter="cold")


def test_order_is_deterministic_whatever_the_input_order() -> None:
    desired = placement(**{f"a{i}": ((f"w{i % 3}", f"w{(i + 1) % 3}"), 2, float(i % 4)) for i in range(12)})
    holdings = {f"w{i}": frozenset({f"a{(i * 5) % 12}", "gone"}) for i in range(3)}
    forward = plan_actions(desired, holdings, {}, WIDE)
    backward = plan_actions(desired, dict(reversed(list(holdings.items()))), {}, WIDE)
    assert forward == backward
    kinds = [a.kind for a in forward]
    assert kinds == sorted(kinds)  # every load before any unload ("load" < "unload")
    assert sum(k == "unload" for k in kinds) == 3  # "gone" everywhere; wanted ones are all in place


def _reference(desired: Placement, holdings: dict[str, frozenset[str]], loading: dict[str, frozenset[str]],
               budget: PlanBudget) -> list[Action]:
    """The rules of the module docstring, walked over every adapter and every holding (no shortcuts)."""
    holders = {a: {w for w, h in holdings.items() if a in h} for a in frozenset().union(*holdings.values())}
    actions: list[Action] = []
    in_flight = {w: len(loading.get(w, frozenset())) for w in holdings}
    order = sorted(desired.replica_sets.items(),
                   key=lambda kv: (-kv[1].demand_rps / (1 + len(holders.get(kv[0], ()))), kv[0]))
    for a, rs in order:
        for w in rs.workers:
            if len(actions) >= budget.actions_per_tick:
                return actions
            if (w in holdings and a not in holdings[w] and a not in loading.get(w, frozenset())
                    and in_flight[w] < budget.loads_per_worker):
                actions.append(Action(kind="load", worker=w, adapter=a))
                in_flight[w] += 1
    for w in sorted(holdings):
        for a in sorted(holdings[w]):
            if len(actions) >= budget.actions_per_tick:
                return actions
            rs = desired.replica_sets.get(a)
            if rs is None or (rs.replicas == 0 and not rs.workers):
                ok = True
            elif w in rs.workers:
                ok = False
            else:
                available = [x for x in rs.workers if x in holdings]
                ok = sum(1 for x in available if x in holders[a]) >= max(1, min(rs.replicas, len(available)))
            if ok:
                actions.append(Action(kind="unload", worker=w, adapter=a))
                holders[a].discard(w)
    return actions


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_equals_the_rules_walked_naively(data: st.DataObject) -> None:
    workers = [f"w{i}" for i in range(data.draw(st.integers(1, 6)))]
    names = [f"a{i}" for i in range(data.draw(st.integers(0, 12)))]
    sets = {a: ReplicaSet(workers=tuple(data.draw(st.lists(st.sampled_from([*workers, "gone"]), unique=True,
                                                             max_size=3))),
                          replicas=data.draw(st.integers(0, 3)), demand_rps=data.draw(st.sampled_from([0.0, 1.0, 5.0])))
            for a in names if data.draw(st.booleans()) or a == "a0"}
    desired = Placement(replica_sets=sets)
    pool = [*names, "stale"]
    holdings = {w: frozenset(data.draw(st.sets(st.sampled_from(pool), max_size=6))) for w in workers}
    loading = {w: frozenset(data.draw(st.sets(st.sampled_from(pool), max_size=2))) for w in workers}
    budget = PlanBudget(loads_per_worker=data.draw(st.integers(1, 3)), actions_per_tick=data.draw(st.integers(1, 12)))
    expected = _reference(desired, holdings, loading, budget)
    assert plan_actions(desired, holdings, loading, budget) == expected
    assert plan_actions(DesiredIndex(desired), holdings, loading, budget) == expected
