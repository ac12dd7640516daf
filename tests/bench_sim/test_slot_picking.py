"""Slot-aware picking (router.core.picking), as the simulated lora-router uses it: a request goes where its
adapter can join the batch at once, and overflows to another worker only when no holder has room."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from allocator.config import ReplicaConfig
from allocator.model import Placement, ReplicaSet
from bench.perfmodel import PerfParams
from bench.sim.fleet import SimFleet
from bench.sim.strategies import ControlTiming, LoraRouter
from bench.workloads import Requests
from router.core.events import LoadFinished, PlacementChanged
from router.core.picking import first_with_room, has_room, pick_with_room


@dataclass
class W:
    name: str
    inflight: int = 0
    adapter_inflight: dict[str, int] = field(default_factory=dict)
    max_loras: int | None = None
    max_seqs: int | None = None


def test_room_means_in_flight_already_or_a_slot_free() -> None:
    lanes = {"a": 1, "b": 1, "c": 2}
    assert has_room(W("full", 4, lanes, max_loras=3), "a")
    assert not has_room(W("full", 4, lanes, max_loras=3), "z")
    assert has_room(W("full", 4, lanes, max_loras=4), "z")
    assert has_room(W("full", 4, lanes), "z")  # max_loras unknown: assume room


def test_pick_with_room_skips_full_holders_even_when_idler() -> None:
    full = W("full", 0, {"b": 1, "c": 1}, max_loras=2)
    roomy = W("roomy", 9, {"a": 9}, max_loras=2)
    rng = random.Random(1)
    assert {pick_with_room([full, roomy], "a", rng).name for _ in range(50)} == {"roomy"}
    assert pick_with_room([full], "a", rng) is None
    assert pick_with_room([], "a", rng) is None


def test_first_with_room_keeps_the_ranking_order() -> None:
    ranked = [W("x", 0, {"b": 1}, max_loras=1), W("y", 5, {}, max_loras=1), W("z", 0, {}, max_loras=1)]
    assert first_with_room(ranked, "a").name == "y"
    assert first_with_room(ranked[:1], "a") is None


def test_the_simulated_router_overflows_a_full_holder() -> None:
    """Worker 0 holds a0 but runs a1 and a2 in its two GPU slots: a request for a0 is loaded on worker 1
    instead of queueing behind them; later, with room back on worker 0, a0 goes to its holder."""
    requests = Requests(np.array([0.0, 0.0, 0.001, 10.0]), np.array([1, 2, 0, 0], dtype=np.int32),
                        np.full(4, 10, dtype=np.int32), np.full(4, 10, dtype=np.int32))
    fleet = SimFleet(2, ["a0", "a1", "a2"], PerfParams(max_loras=2))
    router = LoraRouter(fleet, 0, ControlTiming(tick_s=100.0), ReplicaConfig())
    fleet.workers[0].held.update({0, 1, 2})
    for name in fleet.names:
        router.state.apply(LoadFinished("w0", name))
    router.state.apply(PlacementChanged(Placement(replica_sets={
        a: ReplicaSet(workers=("w0",), replicas=1) for a in fleet.names})))
    outcome = fleet.run(requests, router.route)
    assert outcome.worker.tolist() == [0, 0, 1, 0]
    assert outcome.placement_loads == 1  # a0 on worker 1


def test_a_full_batch_has_no_room_even_for_its_own_adapter() -> None:
    assert has_room(W("busy", 64, {"a": 64}, max_loras=8), "a")
    busy = W("busy", 64, {"a": 64}, max_loras=8, max_seqs=64)
    assert not has_room(busy, "a")
    assert has_room(W("less", 63, {"a": 63}, max_loras=8, max_seqs=64), "a")
    assert first_with_room([busy, W("next", 3, {"b": 3}, max_loras=8, max_seqs=64)], "a").name == "next"
