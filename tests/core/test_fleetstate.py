"""FleetState without any process: membership, holdings, make before break, the health state machine."""

from __future__ import annotations

import os
import subprocess
import sys

from allocator.hrw import rank_workers
from allocator.model import Placement, ReplicaSet
from router.core.events import (
    AdapterMissing,
    AdaptersListed,
    Answered,
    CatalogChanged,
    DrainCancelled,
    DrainStarted,
    LoadFinished,
    MembershipChanged,
    PlacementChanged,
    ProbeFailed,
    ProbeOk,
    RequestBegun,
    RequestEnded,
    Unloaded,
    Unreachable,
)
from router.core.fleetstate import FleetState
from router.core.health import HealthRules
from router.core.records import AdapterRecord, WorkerRecord


def records(n: int, rank: int = 16, base: str = "base", instance: str = "i0") -> dict[str, WorkerRecord]:
    return {f"w{i}": WorkerRecord(id=f"w{i}", url=f"http://127.0.0.1:{9000 + i}", base_models=(base,),
                                  max_lora_rank=rank, instance=instance) for i in range(n)}


def state_of(n: int, rules: HealthRules | None = None) -> FleetState:
    state = FleetState(rules)
    state.apply(MembershipChanged(records(n)))
    state.apply(CatalogChanged({"a": AdapterRecord(name="a", source="/m/a", base_model="base", rank=8)}))
    return state


def hrw(adapter: str, recs: dict[str, WorkerRecord]) -> list[str]:
    return [w.id for w in rank_workers(adapter, [r.to_worker() for r in recs.values()])]


def test_membership_reports_joins_leaves_and_restarts_and_a_restart_forgets_holdings() -> None:
    state = state_of(2)
    state.apply(LoadFinished("w0", "a"))
    change = state.apply(MembershipChanged({**records(1, instance="i1"), "w2": records(3)["w2"]}))
    assert (change.added, change.removed, change.restarted) == (("w2",), ("w1",), ("w0",))
    assert state.holders("a") == set(), "a restarted worker lost its runtime-loaded adapters"
    assert not state.apply(MembershipChanged(dict(state_records(state)))).changed


def state_records(state: FleetState) -> dict[str, WorkerRecord]:
    return {w: v.record for w, v in state.workers.items()}


def test_bases_follow_the_membership_without_a_set_built_per_request() -> None:
    state = FleetState()
    assert state.bases() == set()
    state.apply(MembershipChanged({"w1": WorkerRecord(id="w1", url="http://h:1", base_models=("b1",)),
                                   "w2": WorkerRecord(id="w2", url="http://h:2", base_models=("b1", "b2"))}))
    assert state.bases() == {"b1", "b2"}
    assert state.bases() is state.bases(), "the request path must not pay O(fleet) per call"
    state.apply(MembershipChanged({"w2": WorkerRecord(id="w2", url="http://h:2", base_models=("b2",))}))
    assert state.bases() == {"b2"}


def test_holders_follow_listings_loads_drains_unloads_and_404s() -> None:
    state = state_of(3)
    assert state.apply(AdaptersListed("w0", frozenset({"a"}))).changed
    assert not state.apply(AdaptersListed("w0", frozenset({"a"}))).changed, "an unchanged listing changes nothing"
    state.apply(LoadFinished("w1", "a"))
    assert state.holders("a") == {"w0", "w1"}
    state.apply(DrainStarted("w0", "a"))
    assert state.holders("a") == {"w1"} and "a" in state.workers["w0"].holds, "a draining worker still holds it"
    state.apply(DrainCancelled("w0", "a"))
    assert state.holders("a") == {"w0", "w1"}
    state.apply(Unloaded("w0", "a"))
    state.apply(AdapterMissing("w1", "a"))
    assert state.holders("a") == set()
    state.apply(LoadFinished("gone", "a"))
    assert state.holders("a") == set(), "an event about a worker that left is ignored"


def test_replica_set_members_first_any_holder_while_they_load() -> None:
    state = state_of(3)
    state.apply(LoadFinished("w2", "a"))
    state.apply(PlacementChanged(Placement(replica_sets={"a": ReplicaSet(workers=("w0", "w1"), replicas=2)})))
    assert [v.id for v in state.routable_holders("a")] == ["w2"], "make before break: the old holder serves"
    state.apply(LoadFinished("w0", "a"))
    assert [v.id for v in state.routable_holders("a")] == ["w0"]


def test_ranking_follows_membership_health_and_the_catalog() -> None:
    state = state_of(4)
    assert [v.id for v in state.ranked("a")] == hrw("a", records(4))
    state.apply(MembershipChanged(records(8)))
    assert [v.id for v in state.ranked("a")] == hrw("a", records(8)), "a joined worker is ranked"
    first = hrw("a", records(8))[0]
    state.apply(Unreachable(first, at=0.0))
    assert first not in [v.id for v in state.ranked("a")], "a worker out of rotation is skipped"
    state.apply(ProbeOk(first))
    small = {**records(8), "w7": WorkerRecord(id="w7", url="http://127.0.0.1:9007", base_models=("base",),
                                              max_lora_rank=8, instance="i0")}
    state.apply(MembershipChanged(small))
    assert "w7" in [v.id for v in state.ranked("a")]
    state.apply(CatalogChanged({"a": AdapterRecord(name="a", source="/m/a", base_model="base", rank=16)}))
    assert "w7" not in [v.id for v in state.ranked("a")], "a rank the worker cannot take excludes it"


def test_an_unreachable_worker_leaves_at_once_and_a_probe_brings_it_back() -> None:
    state = state_of(2, HealthRules(probe_s=2.0))
    assert state.apply(Unreachable("w0", at=10.0)).changed
    assert not state.workers["w0"].healthy and state.workers["w0"].probe_at == 12.0
    assert not state.apply(Unreachable("w0", at=11.0)).changed, "already out"
    state.apply(ProbeFailed("w0", at=12.0))
    assert state.workers["w0"].probe_at == 14.0 and not state.workers["w0"].healthy
    assert state.apply(ProbeOk("w0")).changed and state.workers["w0"].healthy


def test_ejection_needs_consecutive_5xx_and_a_success_resets_the_count() -> None:
    state = state_of(4, HealthRules(down_after_failures=3, max_ejected_fraction=0.5))
    for status in (500, 502, 200, 500, 503):
        state.apply(Answered("w0", status, at=0.0))
    assert state.workers["w0"].healthy, "a success in between resets the count"
    assert state.apply(Answered("w0", 500, at=0.0)).changed
    assert not state.workers["w0"].healthy
    state.apply(ProbeOk("w0"))
    assert state.workers["w0"].consecutive_5xx == 0


def test_ejection_never_takes_more_than_the_max_fraction_out() -> None:
    state = state_of(4, HealthRules(down_after_failures=1, max_ejected_fraction=0.5))
    for worker in ("w0", "w1", "w2", "w3"):
        state.apply(Answered(worker, 500, at=0.0))
    assert sum(not v.healthy for v in state.workers.values()) == 2, "a poison request cannot empty the fleet"
    state.apply(Unreachable("w2", at=0.0))
    assert not state.workers["w2"].healthy, "an unreachable worker is taken out whatever the fraction"


def test_inflight_counts_per_worker_and_adapter() -> None:
    state = state_of(1)
    state.apply(RequestBegun("w0", "a"))
    state.apply(RequestBegun("w0", None))
    assert state.workers["w0"].inflight == 2 and state.workers["w0"].adapter_inflight == {"a": 1}
    state.apply(RequestEnded("w0", "a"))
    state.apply(RequestEnded("w0", None))
    assert state.workers["w0"].inflight == 0 and state.workers["w0"].adapter_inflight == {}


HOLDERS_IN_ORDER = """
from router.core.events import LoadFinished, MembershipChanged, CatalogChanged
from router.core.fleetstate import FleetState
from router.core.records import AdapterRecord, WorkerRecord
state = FleetState()
state.apply(MembershipChanged({f"worker-{i}": WorkerRecord(id=f"worker-{i}", url=f"http://h{i}:80",
                                                          base_models=("base",)) for i in range(8)}))
state.apply(CatalogChanged({"a": AdapterRecord(name="a", source="/m/a", base_model="base")}))
for i in (5, 2, 7, 0, 3):
    state.apply(LoadFinished(f"worker-{i}", "a"))
print(",".join(v.record.id for v in state.routable_holders("a")))
"""


def test_holders_come_in_one_order_whatever_the_process_hash_seed() -> None:
    """The routing policy picks among holders by position (power of two choices with the rng handed in),
    so their order must not follow a set's, which changes with PYTHONHASHSEED: the simulator's figures
    changed from run to run, and two routers with one view and one seed picked differently."""
    orders = {subprocess.run([sys.executable, "-c", HOLDERS_IN_ORDER], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(6)}
    assert len(orders) == 1, orders
