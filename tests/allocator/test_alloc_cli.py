"""`lora-router plan` and `lora-bench allocator` as real processes."""

from __future__ import annotations

import json

from alloc_helpers import run_cli


def plan(*args: str) -> dict:
    done = run_cli("router.commands.plan", "plan", *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_plan_json_shape_and_synthetic_names() -> None:
    out = plan("--workers", "6", "--adapters", "40", "--slots", "20", "--total-rps", "300")
    assert set(out) == {"adapters", "workers", "unplaced", "imbalance"}
    assert list(out["workers"]) == [f"w{i}" for i in range(6)]
    assert list(out["adapters"]) == [f"a{i}" for i in range(40)]
    a0 = out["adapters"]["a0"]
    assert set(a0) == {"replicas", "workers", "demand_rps"}
    assert a0["demand_rps"] == max(a["demand_rps"] for a in out["adapters"].values())
    assert a0["replicas"] == max(a["replicas"] for a in out["adapters"].values()) > 1
    w0 = out["workers"]["w0"]
    assert set(w0) == {"slots", "adapters", "expected_rps"} and w0["slots"] == 20
    for name, a in out["adapters"].items():
        for wid in a["workers"]:
            assert name in out["workers"][wid]["adapters"]
    assert out["unplaced"] == [] and 1.0 <= out["imbalance"] <= 1.25 + 1e-9
    total = sum(w["expected_rps"] for w in out["workers"].values())
    assert abs(total - 300.0) < 1e-6


def test_one_more_worker_is_exactly_one_more_id() -> None:
    small = plan("--workers", "8", "--adapters", "100", "--slots", "30")
    big = plan("--workers", "9", "--adapters", "100", "--slots", "30")
    assert set(big["workers"]) - set(small["workers"]) == {"w8"}
    assert big["workers"]["w8"]["adapters"]


def test_plan_reports_shortage_and_reads_a_config(tmp_path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("placement:\n  default_slots: 2\n  defaults: {per_replica_rps: 50}\n")
    done = run_cli("router.commands.plan", "plan", "--config", str(config), "--workers", "3",
                   "--adapters", "10")
    assert done.returncode == 0, done.stderr
    assert "3 workers, 10 adapters, 6 replicas placed" in done.stdout
    assert "short of replicas: " in done.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("placement: {epsilon: lots}\n")
    failed = run_cli("router.commands.plan", "plan", "--config", str(bad), "--workers", "3", "--adapters", "1")
    assert failed.returncode == 1 and "placement.epsilon" in failed.stderr and "'lots'" in failed.stderr


def test_plan_refuses_negative_sizes() -> None:
    done = run_cli("router.commands.plan", "plan", "--workers", "-1", "--adapters", "3")
    assert done.returncode == 2 and "--workers" in done.stderr


def test_allocator_benchmark_prints_figures_for_every_strategy() -> None:
    done = run_cli("bench.commands.allocator", "allocator", "--workers", "60", "--adapters", "600",
                   "--repeats", "1", "--ticks", "12", "--seeds", "2", "--json")
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    speed = figures["speed"]
    assert speed["adapters"] == 600 and speed["replicas_placed"] >= 600
    assert speed["full_s_median"] > 0 and speed["join_s_median"] > 0 and speed["peak_rss_mb"] > 0
    assert speed["join_churn_per_fair"] > 0 and speed["join_imbalance"] <= 1.25 + 1e-9
    sticky = figures["sticky"]
    assert sticky["seeds"] == 2 and sticky["workers"] == 32 and sticky["adapters"] == 1000
    for event in ("join", "leave"):
        row = sticky[event]
        assert 0 < row["churn_per_fair_mean"] <= row["churn_per_fair_max"]
        assert row["imbalance_max"] <= 1 + sticky["epsilon"] + 1e-9
        assert row["fresh_imbalance_max"] <= 1 + sticky["epsilon"] + 1e-9
    assert sticky["leave"]["churn_per_held_mean"] > 0
    strategies = figures["comparison"]["strategies"]
    assert set(strategies) == {"allocator (sticky)", "allocator (no sticky)", "dynamo-style relative",
                               "ring + bounded loads", "random"}
    ours = strategies["allocator (sticky)"]
    assert ours["overflow_max"] == 0 and ours["moves_join"] > 0
    table = run_cli("bench.commands.allocator", "allocator", "--workers", "30", "--adapters", "100",
                    "--repeats", "1", "--ticks", "11", "--seeds", "1")
    assert table.returncode == 0 and "dynamo-style relative" in table.stdout and "peak RSS" in table.stdout
    assert "sticky re-plans" in table.stdout and "join (33)" in table.stdout and "leave (31)" in table.stdout
