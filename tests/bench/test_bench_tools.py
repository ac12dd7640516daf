"""The worker profile's model and reading Prometheus text (the proxy benchmark's tools are tested in
tests/bench_proxy)."""

from __future__ import annotations

from bench.commands.worker_profile import simulate
from bench.perfmodel import PerfParams
from bench.promtext import metric_sum


def test_more_adapters_than_slots_costs_swaps_and_throughput() -> None:
    params = PerfParams(max_loras=4, max_cpu_loras=8)
    fits = simulate(params, 16, 4, 200, 64, 16)
    spills = simulate(params, 16, 8, 200, 64, 16)
    assert spills["slot_swaps"] > fits["slot_swaps"]
    assert spills["req_per_s"] < fits["req_per_s"]
    assert simulate(params, 16, 4, 200, 64, 16) == fits, "virtual time is deterministic"


def test_metric_sum_adds_a_metrics_samples_and_nothing_else() -> None:
    text = (
        "# TYPE lora_router_retries counter\n"
        'lora_router_retries_total{reason="connect"} 2.0\n'
        'lora_router_retries_total{reason="worker_5xx"} 3.0\n'
        'lora_router_retries_created{reason="connect"} 1.7e9\n'
        "lora_router_retries_total_other 100.0\n"
        "lora_sim_busy_seconds_total 1.5"
    )
    assert metric_sum(text, "lora_router_retries_total") == 5.0
    assert metric_sum(text, "lora_router_retries_total", 'reason="connect"') == 2.0
    assert metric_sum(text, "lora_sim_busy_seconds_total") == 1.5
    assert metric_sum(text, "lora_router_leader") == 0.0
