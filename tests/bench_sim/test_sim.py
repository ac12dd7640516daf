"""The fleet simulator: determinism, every strategy, metrics by hand, the CLI's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from allocator import hrw, synthetic
from bench.baselines_placement import HrwOrders
from bench.cli import main
from bench.perfmodel import PerfParams
from bench.sim.fleet import SimFleet
from bench.sim.metrics import compute
from bench.sim.scenarios import SCENARIOS, Setup, Shape, names, run_strategy
from bench.sim.strategies import STRATEGIES, RoundRobin
from bench.workloads import Lengths, Requests

SMALL = ["--requests", "1500", "--workers", "4", "--adapters", "60", "--max-loras", "2"]


def test_same_seed_same_json(tmp_path: Path) -> None:
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}.json"
        assert main(["sim", "--scenario", "popularity-shift", *SMALL, "--seed", "7", "--json", str(out)]) == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    doc = json.loads(outs[0])
    assert doc["scenario"] == "popularity-shift"
    assert set(doc["results"]) == set(STRATEGIES)
    for figures in doc["results"].values():
        assert {"requests", "throughput_rps", "ttft_p50_ms", "ttft_p99_ms", "e2e_p99_ms", "slo_attainment",
                "adapter_loads", "slot_swaps", "imbalance"} <= set(figures)


def test_another_seed_another_workload(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    main(["sim", "--scenario", "zipf", *SMALL, "--strategies", "random", "--seed", "1", "--json", str(a)])
    main(["sim", "--scenario", "zipf", *SMALL, "--strategies", "random", "--seed", "2", "--json", str(b)])
    assert json.loads(a.read_text())["results"] != json.loads(b.read_text())["results"]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("scenario", ["flash-crowd", "mmpp"])
def test_every_strategy_serves_every_request(strategy: str, scenario: str) -> None:
    shape = Shape(workers=5, adapters=40, max_loras=2, requests=800, rps_per_worker=4.0)
    requests = SCENARIOS[scenario](np.random.default_rng(3), shape, Lengths())
    metrics, outcome = run_strategy(strategy, requests, names(40), Setup(workers=5, max_loras=2, tick_s=1.0), 3)
    assert metrics.requests == 800
    assert np.all(outcome.first_token >= outcome.arrival)
    assert np.all(outcome.finish >= outcome.first_token)
    assert set(np.unique(outcome.worker)) <= set(range(5))
    assert metrics.ttft_p50_ms <= metrics.ttft_p99_ms <= metrics.e2e_p99_ms
    assert metrics.adapter_loads > 0 and metrics.slot_swaps > 0


def test_placement_strategies_only_route_to_their_sets() -> None:
    shape = Shape(workers=8, adapters=30, max_loras=2, requests=1500, rps_per_worker=3.0)
    requests = SCENARIOS["zipf"](np.random.default_rng(5), shape, Lengths())
    _, hashed = run_strategy("consistent-hash", requests, names(30), Setup(workers=8, max_loras=2), 5)
    for adapter in range(30):
        assert len(set(hashed.worker[requests.adapter == adapter].tolist())) <= 1
    router, outcome = run_strategy("lora-router", requests, names(30), Setup(workers=8, max_loras=2), 5)
    assert router.placement_churn >= 0 and outcome.placement_loads > 0


def test_metrics_of_a_hand_checked_run() -> None:
    """One worker, two requests for one adapter, the engine's default costs (ms):
    first: host load 120 + slot swap 8 + decode 12 + 0.15 + 1.5 + prefill 100 x 0.04 x 1.002 = 145.658,
    then one decode step 13.65 -> e2e 159.308. Second (t = 1 s, prompt 0, 1 token): adapter resident,
    one step of 13.65 ms."""
    requests = Requests(np.array([0.0, 1.0]), np.array([0, 0], dtype=np.int32),
                        np.array([100, 0], dtype=np.int32), np.array([2, 1], dtype=np.int32))
    fleet = SimFleet(1, ["a0"], PerfParams(max_loras=1))
    outcome = fleet.run(requests, RoundRobin(fleet, 0).route)
    assert outcome.first_token - outcome.arrival == pytest.approx([0.145658, 0.01365])
    assert outcome.finish - outcome.arrival == pytest.approx([0.159308, 0.01365])
    m = compute(outcome, ttft_slo_ms=100.0, churn=0)
    assert m.requests == 2
    assert m.throughput_rps == pytest.approx(2 / 1.01365, abs=1e-3)
    assert m.ttft_p50_ms == pytest.approx((145.658 + 13.65) / 2, abs=1e-3)
    assert m.e2e_p99_ms == pytest.approx(13.65 + 0.99 * (159.308 - 13.65), abs=1e-3)
    assert m.slo_attainment == 0.5
    assert m.adapter_loads == 500.0 and m.slot_swaps == 500.0
    assert m.imbalance == 1.0


def test_docs_block_is_replaced_not_appended(tmp_path: Path) -> None:
    md = tmp_path / "benchmarks.md"
    md.write_text("# Benchmarks\n\n## Proxy overhead\n\nkept\n")
    args = ["sim", "--all", "--docs", str(tmp_path), "--strategies", "round-robin,lora-router",
            "--requests", "300", "--workers", "3", "--adapters", "20", "--max-loras", "2"]
    assert main(args) == 0
    assert main(args) == 0
    text = md.read_text()
    assert text.count("<!-- sim:begin") == 1 and text.count("<!-- sim:end -->") == 1
    assert "## Proxy overhead\n\nkept" in text
    for scenario in ("zipf", "flash-crowd", "popularity-shift", "diurnal", "chat"):
        assert (tmp_path / "img" / f"sim-{scenario}.png").stat().st_size > 1000
        assert f"### {scenario}" in text and f"(img/sim-{scenario}.png)" in text


def test_plot_and_unknown_strategy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "p.png"
    assert main(["sim", "--scenario", "diurnal", *SMALL, "--strategies", "lora-affinity", "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "requests/s" in capsys.readouterr().out
    assert main(["sim", "--scenario", "zipf", "--strategies", "nope"]) == 2
    assert "unknown strategy nope" in capsys.readouterr().err


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_fast_forward_equals_stepping_one_by_one(strategy: str) -> None:
    """Coasting through identical decode steps must not move a single first token or finish."""
    shape = Shape(workers=4, adapters=50, max_loras=2, requests=1200, rps_per_worker=5.0)
    requests = SCENARIOS["flash-crowd"](np.random.default_rng(11), shape, Lengths())
    outcomes = [run_strategy(strategy, requests, names(50), Setup(workers=4, max_loras=2, tick_s=1.0,
                                                                    fast_forward=fast), 11)[1]
                for fast in (True, False)]
    fast, slow = outcomes
    assert np.array_equal(fast.first_token, slow.first_token)
    assert np.array_equal(fast.finish, slow.finish)
    assert np.array_equal(fast.worker, slow.worker)
    assert fast.busy_s == pytest.approx(slow.busy_s, rel=1e-12)
    assert (fast.slot_swaps, fast.adapter_loads) == (slow.slot_swaps, slow.adapter_loads)


def test_a_coast_is_cut_where_the_arrival_is_admitted() -> None:
    """One long request coasts; a second one arriving mid-coast starts at the next step boundary, as
    stepping would start it: both ways give the same times, and the arrival does not wait for the finish."""
    requests = Requests(np.array([0.0, 0.1]), np.array([0, 0], dtype=np.int32),
                        np.array([10, 10], dtype=np.int32), np.array([200, 5], dtype=np.int32))
    runs = []
    for fast in (True, False):
        fleet = SimFleet(1, ["a0"], PerfParams(max_loras=1), fast_forward=fast)
        runs.append(fleet.run(requests, RoundRobin(fleet, 0).route))
    assert np.array_equal(runs[0].first_token, runs[1].first_token)
    assert np.array_equal(runs[0].finish, runs[1].finish)
    assert runs[0].first_token[1] < 0.2 < runs[0].finish[0]


def test_dynamo_bulk_rankings_equal_rank_workers() -> None:
    """Dynamo's cached bulk rankings must order workers exactly as `hrw.rank_workers` does."""
    pool = synthetic.workers(23, 8)
    pool = [pool[i] for i in np.random.default_rng(2).permutation(len(pool))]
    catalog = synthetic.adapters(300)
    rows = HrwOrders().of(pool, catalog)
    for a in catalog:
        assert [pool[i].id for i in rows[a.name].tolist()] == [w.id for w in hrw.rank_workers(a.name, pool)]


def test_first_hrw_is_rank_workers_first() -> None:
    fleet = SimFleet(13, names(200), PerfParams())
    ranked = STRATEGIES["consistent-hash"](fleet, 0, None, None)  # type: ignore[arg-type]
    for a in range(200):
        assert ranked.pool[ranked.first_hrw(a)].id == hrw.rank_workers(f"a{a}", ranked.pool)[0].id


def test_the_table_reports_the_simulator_speed_per_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--scenario", "zipf", *SMALL, "--strategies", "random,lora-router"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("strategy"))
    assert header.endswith("sim req/s")
    rows = [line for line in out.splitlines() if line.startswith(("random", "lora-router"))]
    assert len(rows) == 2 and all(float(row.split()[-1].replace(",", "")) > 0 for row in rows)
