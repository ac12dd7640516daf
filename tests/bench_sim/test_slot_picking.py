"""Slot-aware picking (router.picking), as the simulated lora-router uses it: a request goes where its
adapter can join the batch at once, and overflows to another worker only when no holder has room."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from allocator.config import ReplicaConfig
from bench.perfmodel import PerfParams
from bench.sim.fleet import Fleet
from bench.sim.strategies import ControlLoop, LoraRouter
from router.picking import first_with_room, has_room, pick_with_room


@dataclass
class W:
    name: str
    inflight: int = 0
    adapter_inflight: dict[str, int] = field(default_factory=dict)


def test_room_means_in_flight_already_or_a_slot_free() -> None:
    full = W("full", 4, {"a": 1, "b": 1, "c": 2})
    assert has_room(full, "a", 3)
    assert not has_room(full, "z", 3)
    assert has_room(full, "z", 4)
    assert has_room(full, "z", None)  # max_loras unknown: assume room


def test_pick_with_room_skips_full_holders_even_when_idler() -> None:
    full = W("full", 0, {"b": 1, "c": 1})
    roomy = W("roomy", 9, {"a": 9})
    rng = random.Random(1)
    assert {pick_with_room([full, roomy], "a", 2, rng).name for _ in range(50)} == {"roomy"}
    assert pick_with_room([full], "a", 2, rng) is None
    assert pick_with_room([], "a", 2, rng) is None


def test_first_with_room_keeps_the_ranking_order() -> None:
    ranked = [W("x", 0, {"b": 1}), W("y", 5, {}), W("z", 0, {})]
    assert first_with_room(ranked, "a", 1).name == "y"
    assert first_with_room(ranked[:1], "a", 1) is None


def test_the_simulated_router_overflows_a_full_holder() -> None:
    """Worker 0 holds a0 but runs two other adapters in its two GPU slots: a request for a0 is loaded on
    worker 1 instead of queueing behind them; with room back on worker 0 it goes to the holder."""
    fleet = Fleet(2, ["a0", "a1", "a2"], PerfParams(max_loras=2))
    router = LoraRouter(fleet, 0, ControlLoop(), ReplicaConfig())
    w0, w1 = fleet.workers
    w0.held.add(0)
    router.sets[0] = [w0]
    fleet._adapter = np.array([1, 2, 0, 0], dtype=np.int32)
    fleet._prompt = fleet._output = np.array([10, 10, 10, 10], dtype=np.int32)
    fleet._first = fleet._finish = np.full(4, np.nan)
    fleet._worker = np.full(4, -1, dtype=np.int32)
    for rid in (0, 1):
        fleet.submit(0, rid)
    router.route(2, 0)
    assert 0 in w1.loading and w1.loading[0] == [2]
    w0.adapter_inflight.clear()  # as if both had finished
    router.route(3, 0)
    assert fleet._worker[3] == 0
