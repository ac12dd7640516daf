"""The worker profile's model (the proxy benchmark's tools are tested in tests/bench_proxy)."""

from __future__ import annotations

from bench.commands.worker_profile import simulate
from bench.perfmodel import PerfParams


def test_more_adapters_than_slots_costs_swaps_and_throughput() -> None:
    params = PerfParams(max_loras=4, max_cpu_loras=8)
    fits = simulate(params, 16, 4, 200, 64, 16)
    spills = simulate(params, 16, 8, 200, 64, 16)
    assert spills["slot_swaps"] > fits["slot_swaps"]
    assert spills["req_per_s"] < fits["req_per_s"]
    assert simulate(params, 16, 4, 200, 64, 16) == fits, "virtual time is deterministic"
