"""The reconciler's pure parts: which of the plan's actions this router does, failures and backoff."""

from __future__ import annotations

import random

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocator.model import Action, Placement, ReplicaSet
from allocator.plan import DesiredIndex
from router.core.reconcile_plan import (
    Failure,
    WorkerBook,
    WorkerWork,
    backoff_delay,
    failure_marks,
    stale,
    worker_work,
)
from router.core.records import AdapterFailure, AdapterRecord


def _catalog(*names: str) -> dict[str, AdapterRecord]:
    return {n: AdapterRecord(name=n, source=f"/adapters/{n}", base_model="base", rank=8) for n in names}


def _placement(**sets: tuple[str, ...]) -> Placement:
    return Placement(epoch=1, replica_sets={n: ReplicaSet(workers=w, replicas=len(w)) for n, w in sets.items()})


def test_the_desired_index_inverts_the_placement() -> None:
    index = DesiredIndex(_placement(a=("w1", "w2"), b=("w2",), c=()))
    assert index.on == {"w1": frozenset({"a"}), "w2": frozenset({"a", "b"})}


def _work(actions: list[Action], placement: Placement, catalog: dict[str, AdapterRecord], managed: set[str],
          idle_since: dict[tuple[str, str], float] | None = None, now: float = 0.0) -> dict[str, WorkerWork]:
    return worker_work(actions, placement, catalog, managed, {} if idle_since is None else idle_since, now, 5.0)


def test_work_keeps_loads_of_catalog_adapters_only() -> None:
    actions = [Action(kind="load", worker="w1", adapter="a"), Action(kind="load", worker="w1", adapter="gone")]
    assert _work(actions, _placement(a=("w1",)), _catalog("a"), {"a", "gone"}) == {"w1": WorkerWork(loads=["a"])}


def test_an_adapter_the_placement_has_not_seen_yet_is_not_unloaded() -> None:
    """Just added to the catalog (maybe cold-started here): wait for the leader's next placement."""
    actions = [Action(kind="unload", worker="w1", adapter="new")]
    assert _work(actions, _placement(), _catalog("new"), {"new"}) == {"w1": WorkerWork()}


def test_an_adapter_removed_from_the_catalog_is_unloaded_if_managed() -> None:
    actions = [Action(kind="unload", worker="w1", adapter="old")]
    assert _work(actions, _placement(), _catalog(), {"old"}) == {"w1": WorkerWork(unloads=["old"])}


def test_adapters_the_router_never_managed_are_left_alone() -> None:
    actions = [Action(kind="unload", worker="w1", adapter="started-with-it")]
    assert _work(actions, _placement(), _catalog(), set()) == {"w1": WorkerWork()}


def test_placement_unloads_pass_through() -> None:
    actions = [Action(kind="unload", worker="w1", adapter="a")]
    assert _work(actions, _placement(a=("w2",)), _catalog("a"), set()) == {"w1": WorkerWork(unloads=["a"])}


def test_an_idle_adapter_sized_to_zero_is_unloaded_only_after_the_grace() -> None:
    """A cold start loads outside the placement; the placement needs a tick or two to see the demand."""
    actions = [Action(kind="unload", worker="w1", adapter="a")]
    idle: dict[tuple[str, str], float] = {}
    placement = _placement(a=())
    assert _work(actions, placement, _catalog("a"), {"a"}, idle, now=100.0) == {"w1": WorkerWork()}
    assert _work(actions, placement, _catalog("a"), {"a"}, idle, now=104.0) == {"w1": WorkerWork()}
    assert _work(actions, placement, _catalog("a"), {"a"}, idle, now=105.0) == {"w1": WorkerWork(unloads=["a"])}
    assert _work([], placement, _catalog("a"), {"a"}, idle, now=106.0) == {}
    assert idle == {}, "a pair no longer planned for unloading starts its grace afresh"


def test_a_changed_source_is_stale() -> None:
    catalog = _catalog("a", "b")
    loaded_from = {"a": "/adapters/a", "b": "/adapters/b-old"}
    assert stale({"a", "b", "c"}, loaded_from, catalog) == ("b",)


@given(st.dictionaries(st.sampled_from("abcdef"), st.lists(st.sampled_from(["w1", "w2", "w3"]), unique=True)))
def test_the_desired_index_round_trips(sets: dict[str, list[str]]) -> None:
    placement = _placement(**{n: tuple(ws) for n, ws in sets.items()})
    index = DesiredIndex(placement).on
    pairs = {(w, n) for w, names in index.items() for n in names}
    assert pairs == {(w, n) for n, ws in sets.items() for w in ws}


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(4)
    delays = [backoff_delay(n, 0.5, 8.0, rng) for n in range(1, 12)]
    assert all(0.25 <= d < 12.0 for d in delays)
    assert delays[0] < 0.75 and delays[-1] >= 4.0
    assert len({round(d, 6) for d in delays[-4:]}) == 4


def test_a_transient_failure_waits_for_its_backoff() -> None:
    book = WorkerBook()
    key = ("/adapters/a", "v1")
    book.failed("a", op="load", reason="transient", detail="timeout", permanent=False, now=10.0, wall=1e9,
                key=key, retry_delay=2.0)
    assert not book.may_try("a", 11.0, key)
    assert book.may_try("a", 12.0, key)
    book.failed("a", op="load", reason="transient", detail="timeout", permanent=False, now=12.0, wall=1e9,
                key=key, retry_delay=4.0)
    assert book.failures["a"].attempts == 2
    book.succeeded("a")
    assert "a" not in book.failures and book.may_try("a", 12.0, key)


def test_a_permanent_failure_is_retried_after_its_backoff_or_at_once_when_the_source_or_config_changes() -> None:
    book = WorkerBook()
    key = ("/adapters/a", "v1")
    book.failed("a", op="load", reason="not_found", detail="No adapter found", permanent=True, now=1.0,
                wall=1e9, key=key, retry_delay=60.0)
    assert not book.may_try("a", 60.0, key)
    assert book.may_try("a", 61.0, key), "files may appear later: a refused load is retried"
    assert book.failures["a"].reason == "not_found" and book.refusal("a", key) is book.failures["a"]
    assert book.refusal("a", ("/adapters/a", "v2")) is None
    assert book.may_try("a", 2.0, ("/adapters/a", "v2"))
    assert "a" not in book.failures


def test_next_wake_is_the_earliest_due_thing() -> None:
    book = WorkerBook()
    book.list_at = 15.0
    assert book.next_wake(10.0, 0.05) == 5.0
    book.retry_at["a"] = 12.0
    assert book.next_wake(10.0, 0.05) == 2.0
    book.draining_since["b"] = 9.0
    assert book.next_wake(10.0, 0.05) == pytest.approx(0.05)


def test_failure_marks_only_when_every_placed_worker_refused_and_cleared_by_a_holder() -> None:
    catalog = _catalog("a", "b", "c")
    placement = Placement(epoch=1, replica_sets={n: ReplicaSet(workers=("w1", "w2"), replicas=2) for n in catalog})
    refusal = Failure(op="load", reason="not_found", detail="No adapter found", permanent=True, attempts=1, at=5.0)
    refused = {"a": {"w1": refusal, "w2": refusal}, "b": {"w1": refusal}}
    marks = failure_marks(catalog, placement, lambda n: set(), refused, {"w1", "w2"}, now=100.0)
    assert marks == {"a": AdapterFailure(reason="not_found", detail="No adapter found", workers=("w1", "w2"),
                                         since=100.0)}, "b: w2 not refused yet; c: nothing refused"
    marked = {**catalog, "a": msgspec.structs.replace(catalog["a"], failed=marks["a"])}
    assert failure_marks(marked, placement, lambda n: set(), refused, {"w1", "w2"}, now=200.0) == {}, "no rewrite"
    assert failure_marks(marked, placement, lambda n: set(), {}, {"w1", "w2"}, now=200.0) == {}, "retries keep it"
    assert failure_marks(marked, placement, lambda n: {"w2"} if n == "a" else set(), {}, {"w1", "w2"},
                         now=200.0) == {"a": None}, "a holder clears the mark"
    assert failure_marks(catalog, placement, lambda n: set(), {"b": {"w1": refusal}}, {"w1"}, now=1.0)["b"].workers \
        == ("w1",), "a departed worker is not waited for"
