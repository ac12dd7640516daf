"""`lora-bench allocator`: placement speed and memory, sticky re-plans, then churn and imbalance
against baselines.

Speed: a full placement of 10,000 adapters on 1,000 workers, and one worker
joining or leaving re-planned by a warm `Planner`; peak RSS of this process
right after (the later parts are smaller), then what that join and that leave
moved. Sticky study: over several seeds, one worker joining and, separately,
one leaving a fleet of 32 under Poisson-sampled Zipf demand; the sticky
re-plan's churn against the fair share and its imbalance against a fresh
placement of the same input. Comparison: the same ticks of noisy Zipf demand,
a worker joining, one leaving and a flash crowd, fed to the allocator and to
the baselines in bench/baselines_placement.py.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from allocator import synthetic
from allocator.config import ReplicaConfig
from allocator.measure import assignments, expected_loads, fair_share, imbalance, moved, slot_overflow
from allocator.model import Placement
from allocator.placement import Planner, compute_placement
from bench.baselines_placement import (
    DynamoStrategy,
    OursStrategy,
    PlacementStrategy,
    RandomStrategy,
    RingStrategy,
    noisy_zipf,
)

HELP = "Benchmark placement: speed and memory at 10k adapters x 1k workers; churn and imbalance vs baselines."

JOIN_TICK, LEAVE_TICK, SPIKE_TICK = 10, 20, 30

TARGETS = {(1000, 10000): ("1000 ms", "50 ms", "200 MB", ""),
           (10000, 100000): ("5000 ms", "200 ms median", "2 GB", "join churn 1.05")}
"""The aims set for the default run and for the 100,000-adapter run (workers, adapters) -> full placement,
re-plan, peak RSS, churn; other sizes print none."""

STUDY_WORKERS, STUDY_ADAPTERS, STUDY_SLOTS, STUDY_RPS, STUDY_WINDOW_S = 32, 1000, 64, 1000.0, 60.0
"""The sticky study's fleet: about 31 rps per worker, so most adapters need one replica and the
hottest a dozen, and items are coarse next to the bound: the regime where bounds bind."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    p.add_argument("--workers", type=int, default=1000, help="workers in the speed run (default 1000)")
    p.add_argument("--adapters", type=int, default=10000, help="adapters in the speed run (default 10000)")
    p.add_argument("--slots", type=int, default=32, help="slots per worker in the speed run (default 32)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement (default 5)")
    p.add_argument("--ticks", type=int, default=40, help="ticks in the comparison run (default 40)")
    p.add_argument("--seed", type=int, default=0, help="seed of the comparison's demand noise (default 0)")
    p.add_argument("--seeds", type=int, default=8,
                   help="seeds of the sticky study, each a demand draw and a worker joining or leaving (default 8)")


def _timed(fn: Callable[[], Any], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def speed(n_workers: int, n_adapters: int, slots: int, repeats: int) -> dict[str, Any]:
    config = ReplicaConfig()
    workers = synthetic.workers(n_workers, slots)
    adapters = synthetic.adapters(n_adapters)
    demand = synthetic.zipf_demand(n_adapters, 1.0, 20.0 * n_workers)
    full = _timed(lambda: compute_placement(workers, adapters, demand, config, None, 0.0), repeats)
    planner = Planner()
    base = planner.place(workers, adapters, demand, config, None, 0.0)
    joined = workers + synthetic.workers(1, slots, start=n_workers)
    left = [w for w in workers if w.id != f"w{n_workers // 2}"]
    join, leave = [], []
    for _ in range(repeats):
        join += _timed(lambda: planner.place(joined, adapters, demand, config, base, 2.0), 1)
        planner.place(workers, adapters, demand, config, base, 2.0)
        leave += _timed(lambda: planner.place(left, adapters, demand, config, base, 2.0), 1)
        planner.place(workers, adapters, demand, config, base, 2.0)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    joined_placement = planner.place(joined, adapters, demand, config, base, 2.0)
    left_placement = planner.place(left, adapters, demand, config, base, 2.0)
    return {
        "workers": n_workers, "adapters": n_adapters, "slots": slots,
        "replicas_placed": sum(len(rs.workers) for rs in base.replica_sets.values()),
        "unplaced": len(base.unplaced),
        "full_s_median": statistics.median(full), "full_s_max": max(full),
        "join_s_median": statistics.median(join), "join_s_max": max(join),
        "leave_s_median": statistics.median(leave), "leave_s_max": max(leave),
        "peak_rss_mb": peak_rss_mb,
        "join_churn_per_fair": moved(base, joined_placement) / fair_share(joined_placement, joined),
        "join_imbalance": imbalance(expected_loads(joined_placement, joined), joined),
        "leave_churn_per_fair": moved(base, left_placement) / fair_share(base, workers),
        "leave_imbalance": imbalance(expected_loads(left_placement, left), left),
    }


def sticky_study(seeds: int) -> dict[str, Any]:
    """Sticky re-plans after one worker joins or leaves, against a fresh placement of the same input
    (not sticky, no previous placement).

    Each seed draws the demand (Poisson arrivals of Zipf(1.0) means over 60 s, as a router
    measures it), the joining worker's name and the leaving worker, so the figures average over
    HRW draws too: one fixed newcomer's share of HRW is itself a draw (0.7x to 1.4x the fair share
    among 32 names tried). Before and after see the same demand: the churn is the event's alone.
    Churn is new (adapter, worker) assignments over the fair share (join: assignments after /
    workers after; leave: assignments before / workers before); the leave's `churn_per_held_*`
    divide by what the leaving worker really held, the least any placement must move.
    Imbalance is max / mean expected load.
    """
    config = ReplicaConfig()
    plain = msgspec.structs.replace(config, sticky=False)
    workers = synthetic.workers(STUDY_WORKERS, STUDY_SLOTS)
    adapters = synthetic.adapters(STUDY_ADAPTERS)
    rows: dict[str, dict[str, list[float]]] = {
        event: {"churn": [], "fresh_churn": [], "imbalance": [], "fresh_imbalance": [], "per_held": []}
        for event in ("join", "leave")}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        demand = synthetic.zipf_demand(STUDY_ADAPTERS, 1.0, STUDY_RPS, rng, window_s=STUDY_WINDOW_S)
        before = compute_placement(workers, adapters, demand, config, None, 0.0)
        gone = workers[int(rng.integers(STUDY_WORKERS))].id
        events = {"join": workers + synthetic.workers(1, STUDY_SLOTS, start=STUDY_WORKERS + seed),
                  "leave": [w for w in workers if w.id != gone]}
        for event, after_workers in events.items():
            sticky = compute_placement(after_workers, adapters, demand, config, before, 1.0)
            fresh = compute_placement(after_workers, adapters, demand, plain, None, 1.0)
            fair = fair_share(sticky, after_workers) if event == "join" else fair_share(before, workers)
            row = rows[event]
            row["churn"].append(moved(before, sticky) / fair)
            row["fresh_churn"].append(moved(before, fresh) / fair)
            row["imbalance"].append(imbalance(expected_loads(sticky, after_workers), after_workers))
            row["fresh_imbalance"].append(imbalance(expected_loads(fresh, after_workers), after_workers))
            if event == "leave":
                held = sum(1 for _, w in assignments(before) if w == gone)
                row["per_held"].append(moved(before, sticky) / max(1, held))
    figures: dict[str, Any] = {"workers": STUDY_WORKERS, "adapters": STUDY_ADAPTERS, "slots": STUDY_SLOTS,
                               "total_rps": STUDY_RPS, "window_s": STUDY_WINDOW_S, "seeds": seeds,
                               "epsilon": config.epsilon}
    for event, row in rows.items():
        figures[event] = {
            "churn_per_fair_mean": float(np.mean(row["churn"])), "churn_per_fair_max": max(row["churn"]),
            "fresh_churn_per_fair_mean": float(np.mean(row["fresh_churn"])),
            "imbalance_mean": float(np.mean(row["imbalance"])), "imbalance_max": max(row["imbalance"]),
            "fresh_imbalance_mean": float(np.mean(row["fresh_imbalance"])),
            "fresh_imbalance_max": max(row["fresh_imbalance"]),
        }
        if row["per_held"]:
            figures[event]["churn_per_held_mean"] = float(np.mean(row["per_held"]))
            figures[event]["churn_per_held_max"] = max(row["per_held"])
    return figures


def compare(ticks: int, seed: int) -> dict[str, Any]:
    """Churn (new replica assignments = adapter loads) and imbalance per strategy over the same ticks."""
    n_workers, slots, n_adapters, total = 64, 64, 2000, 3000.0
    config = ReplicaConfig()
    sticky = OursStrategy(config, tick_s=2.0)
    loose = OursStrategy(msgspec.structs.replace(config, sticky=False), tick_s=2.0)
    loose.name = "allocator (no sticky)"
    strategies: list[PlacementStrategy] = [sticky, loose, DynamoStrategy(),
                                           RingStrategy(sticky, config.epsilon),
                                           RandomStrategy(sticky, config.epsilon)]
    adapters = synthetic.adapters(n_adapters)
    rng = np.random.default_rng(seed)
    stats: dict[str, dict[str, float]] = {
        s.name: {"moves_total": 0, "moves_noise_only": 0, "moves_join": 0, "moves_leave": 0,
                 "moves_spike": 0, "overflow_max": 0, "unplaced_max": 0}
        for s in strategies}
    imbalances: dict[str, list[float]] = {s.name: [] for s in strategies}
    previous: dict[str, Placement] = {}
    for tick in range(ticks):
        workers = synthetic.workers(n_workers, slots)
        if tick >= JOIN_TICK:
            workers += synthetic.workers(1, slots, start=n_workers)
        if tick >= LEAVE_TICK:
            workers = [w for w in workers if w.id != "w7"]
        measured = noisy_zipf(n_adapters, 1.0, total, 0.2, rng)
        if tick >= SPIKE_TICK:
            measured["a1500"] += 0.15 * total
        for s in strategies:
            placement = s.step(workers, adapters, measured)
            row = stats[s.name]
            if s.name in previous:
                m = moved(previous[s.name], placement)
                row["moves_total"] += m
                key = {JOIN_TICK: "moves_join", LEAVE_TICK: "moves_leave", SPIKE_TICK: "moves_spike"}.get(
                    tick, "moves_noise_only")
                row[key] += m
            previous[s.name] = placement
            loads = expected_loads(placement, workers)
            imbalances[s.name].append(imbalance(loads, workers))
            row["overflow_max"] = max(row["overflow_max"], slot_overflow(placement, workers))
            row["unplaced_max"] = max(row["unplaced_max"], len(placement.unplaced))
            row["replicas_last"] = sum(len(rs.workers) for rs in placement.replica_sets.values())
    for name, row in stats.items():
        series = imbalances[name]
        row["imbalance_mean"] = float(np.mean(series))
        row["imbalance_max"] = float(np.max(series))
    return {"workers": n_workers, "slots": slots, "adapters": n_adapters, "total_rps": total,
            "ticks": ticks, "noise": 0.2, "events": {"join": JOIN_TICK, "leave": LEAVE_TICK,
                                                      "spike": SPIKE_TICK}, "strategies": stats}


def run(args: argparse.Namespace) -> int:
    figures = {"speed": speed(args.workers, args.adapters, args.slots, args.repeats),
               "sticky": sticky_study(args.seeds),
               "comparison": compare(args.ticks, args.seed)}
    if args.json:
        sys.stdout.write(msgspec.json.encode(figures).decode() + "\n")
    else:
        sys.stdout.write(tables(figures))
    return 0


def tables(figures: dict[str, Any]) -> str:
    s = figures["speed"]
    full_t, replan_t, rss_t, churn_t = (f"   (target <= {t})" if t else ""
                                        for t in TARGETS.get((s["workers"], s["adapters"]), ("",) * 4))
    lines = [
        (f"speed: {s['adapters']} adapters x {s['workers']} workers, {s['slots']} slots each "
        f"({s['replicas_placed']} replicas placed, {s['unplaced']} short)"),
        (f"  full placement      median {s['full_s_median'] * 1000:8.1f} ms   max {s['full_s_max'] * 1000:8.1f} ms"
         f"{full_t}"),
        (f"  one worker joins    median {s['join_s_median'] * 1000:8.1f} ms   max {s['join_s_max'] * 1000:8.1f} ms"
         f"{replan_t}"),
        (f"  one worker leaves   median {s['leave_s_median'] * 1000:8.1f} ms   max {s['leave_s_max'] * 1000:8.1f} ms"
         f"{replan_t}"),
        f"  peak RSS            {s['peak_rss_mb']:8.1f} MB{rss_t}",
        (f"  churn / fair share  join {s['join_churn_per_fair']:.3f}   leave {s['leave_churn_per_fair']:.3f}"
         f"   imbalance after join {s['join_imbalance']:.3f}, after leave {s['leave_imbalance']:.3f}{churn_t}"),
        "",
    ]
    st = figures["sticky"]
    lines.append(f"sticky re-plans: {st['adapters']} adapters on {st['workers']} workers x {st['slots']} slots, "
                 f"Zipf(1.0) {st['total_rps']:.0f} rps sampled over {st['window_s']:.0f} s, "
                 f"epsilon {st['epsilon']}, {st['seeds']} seeds")
    head = (f"  {'event':<18}{'churn/fair':>11}{'worst':>7}{'fresh':>7}"
            f"{'imb sticky':>12}{'worst':>7}{'imb fresh':>11}{'worst':>7}")
    lines += [head, "  " + "-" * (len(head) - 2)]
    for event, label in (("join", f"join ({st['workers'] + 1})"), ("leave", f"leave ({st['workers'] - 1})")):
        r = st[event]
        lines.append(f"  {label:<18}{r['churn_per_fair_mean']:>11.3f}{r['churn_per_fair_max']:>7.3f}"
                     f"{r['fresh_churn_per_fair_mean']:>7.3f}{r['imbalance_mean']:>12.3f}{r['imbalance_max']:>7.3f}"
                     f"{r['fresh_imbalance_mean']:>11.3f}{r['fresh_imbalance_max']:>7.3f}")
    lv = st["leave"]
    lines += [f"  churn = new (adapter, worker) assignments over the fair share (join: assignments / "
              f"workers after; leave: before); fresh = a placement of the same input, not sticky, with no "
              f"previous one; "
              f"leave churn / what the leaver held: {lv['churn_per_held_mean']:.3f} (worst "
              f"{lv['churn_per_held_max']:.3f})", ""]
    c = figures["comparison"]
    lines.append(f"comparison: {c['adapters']} adapters, {c['workers']} workers x {c['slots']} slots, "
                 f"Zipf(1.0) {c['total_rps']:.0f} rps +-{c['noise']:.0%} noise, {c['ticks']} ticks; "
                 f"join at {c['events']['join']}, leave at {c['events']['leave']}, "
                 f"flash crowd at {c['events']['spike']}")
    head = (f"  {'strategy':<24}{'moves':>7}{'noise':>7}{'join':>6}{'leave':>6}{'spike':>6}"
            f"{'imb mean':>9}{'imb max':>8}{'overflow':>9}{'short':>6}{'replicas':>9}")
    lines += [head, "  " + "-" * (len(head) - 2)]
    for name, r in c["strategies"].items():
        lines.append(f"  {name:<24}{r['moves_total']:>7}{r['moves_noise_only']:>7}{r['moves_join']:>6}"
                     f"{r['moves_leave']:>6}{r['moves_spike']:>6}{r['imbalance_mean']:>9.3f}"
                     f"{r['imbalance_max']:>8.3f}{r['overflow_max']:>9}{r['unplaced_max']:>6}"
                     f"{r['replicas_last']:>9}")
    lines.append("  moves = new (adapter, worker) assignments, i.e. adapter loads; imb = max/mean expected "
                 "rps per worker; overflow = assignments over slot capacity; short = adapters below their "
                 "replica count")
    return "\n".join(lines) + "\n"
