"""The routing policy as a pure function: every retry, overflow and cold-start rule, no process started."""

from __future__ import annotations

import random

import msgspec
import pytest
from test_fleetstate import hrw, records, state_of

from allocator.model import Placement, ReplicaSet
from router.core.events import (
    AdapterMissing,
    CatalogChanged,
    LoadFinished,
    MembershipChanged,
    PlacementChanged,
    RequestBegun,
    Unreachable,
)
from router.core.fleetstate import FleetState
from router.core.names import Target
from router.core.records import AdapterFailure, AdapterRecord, WorkerRecord, entry_name
from router.core.retrybudget import RetryBudget
from router.core.routing import (
    FIRST,
    MAX_FORWARDS,
    Attempts,
    Forward,
    Load,
    LoadThen,
    Refusal,
    Reject,
    Via,
    decide,
)

A = Target(base="base", adapter="a", model="a")
BASE = Target(base="base", adapter=None, model="base")


def run(state: FleetState, tried: Attempts = FIRST, budget: RetryBudget | None = None,
        target: Target = A) -> Forward | LoadThen | Reject:
    return decide(target, state, tried, budget or RetryBudget(0.2), random.Random(0))


def full(state: FleetState, worker: str, max_loras: int = 1) -> None:
    """Make the worker's batch full of another adapter's requests (its LoRA slots all taken)."""
    record = state.workers[worker].record
    records_now = {w: v.record for w, v in state.workers.items()}
    records_now[worker] = msgspec.structs.replace(record, max_loras=max_loras)
    state.apply(MembershipChanged(records_now))
    state.apply(RequestBegun(worker, "other"))


def test_a_holder_gets_the_request_and_the_first_try_is_not_the_last() -> None:
    state = state_of(3)
    state.apply(LoadFinished("w1", "a"))
    decision = run(state)
    assert decision == Forward("w1", Via.ROOM, last_chance=False, retry=False)


def test_a_connect_failure_retries_on_another_holder_spending_the_budget() -> None:
    state = state_of(3)
    for w in ("w0", "w1"):
        state.apply(LoadFinished(w, "a"))
    first = run(state)
    assert isinstance(first, Forward)
    state.apply(Unreachable(first.worker, at=0.0))
    second = run(state, FIRST.forward_failed(first.worker, "connect"))
    assert isinstance(second, Forward) and second.worker != first.worker
    assert second.retry and second.last_chance, "the second try spends the budget and is the last"


def test_a_5xx_worker_is_not_tried_again_for_that_request() -> None:
    state = state_of(2)
    for w in ("w0", "w1"):
        state.apply(LoadFinished(w, "a"))
    tried = FIRST.forward_failed("w0", "worker_5xx")
    for _ in range(20):
        decision = run(state, tried)
        assert isinstance(decision, Forward) and decision.worker == "w1"


def test_a_404_from_a_holder_cold_starts_again_possibly_on_the_same_worker() -> None:
    state = state_of(3)
    first = hrw("a", records(3))[0]
    state.apply(LoadFinished(first, "a"))
    state.apply(AdapterMissing(first, "a"))
    tried = FIRST.forward_failed(first, "adapter_missing", retry_there=True)
    assert run(state, tried) == LoadThen(first, Load.COLD_START), "the worker lost it: load it there again"


def test_the_budget_exhausted_refuses_the_retry() -> None:
    state = state_of(2)
    for w in ("w0", "w1"):
        state.apply(LoadFinished(w, "a"))
    empty = RetryBudget(0.2, cap=0.5)
    empty.tokens = 0.0
    decision = run(state, FIRST.forward_failed("w0", "connect"), empty)
    assert isinstance(decision, Reject) and decision.refusal is Refusal.BUDGET
    assert isinstance(run(state, FIRST, empty), Forward), "a first try needs no budget"


def test_tries_are_bounded() -> None:
    state = state_of(4)
    for w in state.workers:
        state.apply(LoadFinished(w, "a"))
    tried = FIRST
    for _ in range(MAX_FORWARDS):
        decision = run(state, tried)
        assert isinstance(decision, Forward)
        tried = tried.forward_failed(decision.worker, "worker_5xx")
    decision = run(state, tried)
    assert isinstance(decision, Reject) and decision.refusal is Refusal.EXHAUSTED
    assert "worker_5xx" in decision.message


def test_cold_start_loads_on_the_first_hrw_worker_then_the_next_when_it_refuses() -> None:
    state = state_of(4)
    order = hrw("a", records(4))
    assert run(state) == LoadThen(order[0], Load.COLD_START)
    tried = FIRST.load_failed(order[0], Load.COLD_START)
    assert run(state, tried) == LoadThen(order[1], Load.COLD_START)
    for w in order[1:]:
        tried = tried.load_failed(w, Load.COLD_START)
    decision = run(state, tried)
    assert isinstance(decision, Reject) and decision.refusal is Refusal.UNLOADABLE


def test_cold_start_prefers_workers_with_the_remote_source_on_disk() -> None:
    source = "s3://bucket/a"
    recs = records(4)
    order = hrw("a", recs)
    recs[order[2]] = msgspec.structs.replace(recs[order[2]], cache_dir="/c", cached=(entry_name(source),))
    state = FleetState()
    state.apply(MembershipChanged(recs))
    state.apply(CatalogChanged({"a": AdapterRecord(name="a", source=source, base_model="base")}))
    assert run(state) == LoadThen(order[2], Load.COLD_START)


def test_an_adapter_marked_failed_is_refused_without_a_load_and_its_path_is_not_shown() -> None:
    state = state_of(2)
    failure = AdapterFailure(reason="not_found", detail="No adapter found at /secret/m/a", workers=("w0",),
                             since=0.0)
    state.apply(CatalogChanged({"a": AdapterRecord(name="a", source="/secret/m/a", base_model="base",
                                                   failed=failure)}))
    decision = run(state)
    assert isinstance(decision, Reject) and decision.refusal is Refusal.FAILED
    assert "/secret" not in decision.message and "not_found" in decision.message


def test_no_worker_for_the_base_model_says_so() -> None:
    state = state_of(2)
    state.apply(CatalogChanged({"a": AdapterRecord(name="a", source="/m/a", base_model="other")}))
    decision = run(state)
    assert isinstance(decision, Reject) and decision.refusal is Refusal.NO_WORKER
    assert "No worker serves base model 'other'" in decision.message


def test_overflow_goes_to_the_best_ranked_worker_with_room_loading_it_there() -> None:
    state = state_of(3)
    order = hrw("a", records(3))
    holder = order[-1]
    state.apply(LoadFinished(holder, "a"))
    full(state, holder)
    spare = next(w for w in order if w != holder)
    assert run(state) == LoadThen(spare, Load.OVERFLOW)
    state.apply(LoadFinished(spare, "a"))
    assert run(state) == Forward(spare, Via.ROOM, last_chance=False, retry=False)


def test_a_failed_overflow_load_queues_at_a_holder() -> None:
    state = state_of(2)
    order = hrw("a", records(2))
    state.apply(LoadFinished(order[1], "a"))
    full(state, order[1])
    tried = FIRST.load_failed(order[0], Load.OVERFLOW)
    assert run(state, tried) == Forward(order[1], Via.QUEUED, last_chance=False, retry=False)


def test_overflow_to_a_holder_outside_the_replica_set() -> None:
    state = state_of(2)
    order = hrw("a", records(2))
    for w in order:
        state.apply(LoadFinished(w, "a"))
    state.apply(PlacementChanged(Placement(replica_sets={"a": ReplicaSet(workers=(order[1],), replicas=1)})))
    full(state, order[1])
    assert run(state) == Forward(order[0], Via.OVERFLOW_HOLDER, last_chance=False, retry=False)


def test_a_load_is_never_asked_twice_on_one_worker_for_one_request() -> None:
    state = state_of(1)
    tried = FIRST.loaded("w0")
    decision = run(state, tried)
    assert isinstance(decision, Reject), "loaded but still not a holder: no endless load loop"


@pytest.mark.parametrize("n", [1, 3])
def test_base_model_requests_go_to_any_healthy_worker_of_that_base(n: int) -> None:
    state = state_of(n)
    decision = run(state, target=BASE)
    assert isinstance(decision, Forward) and decision.via is Via.BASE
    assert decision.last_chance is (n == 1), "the only worker's answer is relayed whatever it is"
    for w in list(state.workers):
        state.apply(Unreachable(w, at=0.0))
    decision = run(state, target=BASE)
    assert isinstance(decision, Reject) and decision.refusal is Refusal.NO_WORKER


def test_a_worker_out_of_rotation_is_not_a_candidate() -> None:
    state = state_of(2)
    for w in ("w0", "w1"):
        state.apply(LoadFinished(w, "a"))
    state.apply(Unreachable("w0", at=0.0))
    for _ in range(10):
        decision = run(state)
        assert isinstance(decision, Forward) and decision.worker == "w1"


def test_rank_and_base_limit_who_may_cold_start() -> None:
    state = FleetState()
    state.apply(MembershipChanged({"small": WorkerRecord(id="small", url="http://h:1", base_models=("base",),
                                                         max_lora_rank=8)}))
    state.apply(CatalogChanged({"a": AdapterRecord(name="a", source="/m/a", base_model="base", rank=16)}))
    decision = run(state)
    assert isinstance(decision, Reject) and decision.refusal is Refusal.NO_WORKER
    assert "cannot take its rank" in decision.message


def test_cold_start_skips_a_first_ranked_worker_whose_batch_is_full() -> None:
    state = state_of(3)
    order = hrw("a", records(3))
    full(state, order[0])
    assert run(state) == LoadThen(order[1], Load.COLD_START)
    for w in order[1:]:
        full(state, w)
    assert run(state) == LoadThen(order[0], Load.COLD_START), "no room anywhere: the first, to queue there"
