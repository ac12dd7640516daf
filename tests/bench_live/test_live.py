"""`lora-bench live` for real: etcd, worker, registrar and router processes, requests over HTTP, the
workers' own counters, and the simulator on the same requests beside it."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from bench import cli
from bench.live import strategies
from bench.live.compare import RATIO_COLUMNS, compare
from bench.proxybench.targets import vllm_router_binary
from bench.sim.metrics import RunMetrics

REQUESTS = 300
SMALL = ["--scenario", "zipf", "--requests", str(REQUESTS), "--speed", "0.25", "--compare-sim"]


def _run(tmp_path: Path, chosen: str) -> dict:
    out = tmp_path / "live.json"
    assert cli.main(["live", *SMALL, "--strategies", chosen, "--json", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_request_answered_counted_and_compared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(strategies, "vllm_router_binary", lambda: None)
    doc = _run(tmp_path, "lora-router,lora-router-spread,vllm-router-rr")
    printed = capsys.readouterr()
    assert "vllm-router-rr: skipped, vllm-router not installed" in printed.err
    assert doc["skipped"] == [("vllm-router-rr: skipped, vllm-router not installed (pip install vllm-router, "
                               "or set VLLM_ROUTER_BIN)")]
    ran = ["lora-router", "lora-router-spread"]
    assert {"scenario", "workers", "adapters", "max_loras", "requests", "seed", "speed", "routers", "runs",
            "results", "sim", "sim_strategies", "comparison"} <= set(doc)
    assert list(doc["results"]) == ran == list(doc["sim"]) == list(doc["runs"])
    for name in ran:
        run, live, sim = doc["runs"][name], doc["results"][name], doc["sim"][name]
        assert run["statuses"] == {"200": REQUESTS} and run["failed"] == 0
        assert live["requests"] == sim["requests"] == REQUESTS
        assert live["adapter_loads"] > 0, "the workers counted their disk reads"
        assert live["slot_swaps"] >= live["adapter_loads"], "every disk read goes on into a GPU slot"
        assert live["imbalance"] >= 1.0
        assert 0 < live["ttft_p50_ms"] <= live["ttft_p99_ms"] <= live["e2e_p99_ms"]
        assert set(doc["comparison"]["ratios"][name]) == {c for c, _ in RATIO_COLUMNS}
    assert doc["results"]["lora-router-spread"]["placement_churn"] == 0, "placed everywhere, nothing moves"
    assert doc["sim_strategies"] == {"lora-router": "lora-router", "lora-router-spread": "spread"}
    assert all(p["of"] == 1 for p in doc["comparison"]["pairs"].values())
    assert "ratio to the best baseline" in printed.out and printed.out.count("lora-router-spread") >= 3


@pytest.mark.slow
@pytest.mark.skipif(vllm_router_binary() is None, reason="vllm-router not installed (or VLLM_ROUTER_BIN unset)")
def test_vllm_router_consistent_hash_map_is_probed_and_replayed(tmp_path: Path) -> None:
    doc = _run(tmp_path, "vllm-router-ch")
    route_map = doc["runs"]["vllm-router-ch"]["route_map"]
    assert len(route_map) == doc["adapters"] and set(route_map) <= set(range(doc["workers"]))
    assert len(set(route_map)) > 1, "a hash ring spreads adapters over workers"
    assert doc["runs"]["vllm-router-ch"]["failed"] == 0
    assert doc["sim_strategies"]["vllm-router-ch"].startswith("consistent-hash (")


def _metrics(**values: float) -> RunMetrics:
    ms = dict.fromkeys(("ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "e2e_p50_ms", "e2e_p95_ms", "e2e_p99_ms"), 10.0)
    base = {"requests": 10, "throughput_rps": 1.0, "slo_attainment": 1.0, "adapter_loads": 10.0, "slot_swaps": 10.0,
            "imbalance": 1.0, "placement_churn": 0, "ttft_slo_ms": 1000.0, **ms}
    return msgspec.convert({**base, **values}, RunMetrics)


def test_ratios_are_to_the_best_baseline_and_pairs_tolerate_ties() -> None:
    live = {"lora-router": _metrics(ttft_p99_ms=5.0), "a": _metrics(ttft_p99_ms=20.0), "b": _metrics(ttft_p99_ms=10.0)}
    sim = {"lora-router": _metrics(ttft_p99_ms=30.0), "a": _metrics(ttft_p99_ms=20.4), "b": _metrics(ttft_p99_ms=40.0)}
    c = compare(live, sim)
    assert {s: c.ratios[s]["ttft_p99_ms"] for s in live} == {
        "lora-router": {"live": 0.5, "sim": 1.471}, "a": {"live": 2.0, "sim": 1.0}, "b": {"live": 1.0, "sim": 1.961}}
    assert c.ranking["ttft_p99_ms"] == {"live": ["lora-router", "b", "a"], "sim": ["a", "lora-router", "b"]}
    assert c.pairs["ttft_p99_ms"] == {"agree": 1, "of": 3, "differ": ["lora-router vs a", "a vs b"]}
    assert not c.agree["ttft_p99_ms"] and c.agree["e2e_p99_ms"]
    tied = compare({"lora-router": _metrics(e2e_p99_ms=100.0), "a": _metrics(e2e_p99_ms=104.0)},
                   {"lora-router": _metrics(e2e_p99_ms=200.0), "a": _metrics(e2e_p99_ms=100.0)})
    assert tied.pairs["e2e_p99_ms"] == {"agree": 1, "of": 1, "differ": []}, "within 5 % is a tie, not a flip"


@pytest.mark.slow
def test_the_chat_scenario_sends_conversations_and_counts_the_workers_prefix_hits(tmp_path: Path) -> None:
    """Chat turns over HTTP: the workers cut the messages' text into prefix-cache blocks themselves, and
    with vllm-router's round robin (decisions the simulator makes alike) they find as much as the simulator's
    block ids say; cache_aware runs too (compared once the simulator has its counterpart)."""
    chosen = "vllm-router-rr,vllm-router-ca" if vllm_router_binary() is not None else "lora-router-spread"
    out = tmp_path / "chat.json"
    assert cli.main(["live", "--scenario", "chat", "--requests", "200", "--speed", "0.25", "--compare-sim",
                     "--strategies", chosen, "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    for name in chosen.split(","):
        assert doc["runs"][name]["statuses"] == {"200": 200}
        assert doc["results"][name]["prefix_hit_rate"] > 0.3, "system prompts and histories are found again"
    if "vllm-router-rr" in doc.get("sim", {}):
        live, sim = doc["results"]["vllm-router-rr"], doc["sim"]["vllm-router-rr"]
        assert live["prefix_hit_rate"] == pytest.approx(sim["prefix_hit_rate"], abs=0.05)
