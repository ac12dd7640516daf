"""`lora-router plan`: place a synthetic fleet offline and show the result.

Worker ids are w0 ... w{N-1} (so --workers N+1 adds exactly one worker) and
adapters a0 ... a{A-1} with Zipf demand, a0 hottest; the same inputs always
give the same output, so two runs can be diffed to see what a change moves.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec
import numpy as np

from allocator import synthetic
from allocator.config import ConfigError, ReplicaConfig
from allocator.measure import expected_loads, imbalance
from allocator.placement import compute_placement
from router.config import load_config

HELP = "Place a synthetic fleet offline (workers w0.., adapters a0.. with Zipf demand) and print it."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="router config file whose placement: section is used "
                                    "(defaults when omitted)")
    p.add_argument("--workers", type=int, required=True, metavar="N", help="number of workers (w0 ...)")
    p.add_argument("--slots", type=int, default=None, metavar="S",
                   help="adapter slots per worker (default: the config's default_slots)")
    p.add_argument("--adapters", type=int, required=True, metavar="A", help="number of adapters (a0 ...)")
    p.add_argument("--zipf", type=float, default=1.0, metavar="S", help="Zipf exponent of demand (default 1.0)")
    p.add_argument("--total-rps", type=float, default=1000.0, metavar="R",
                   help="total demand over all adapters in requests/s (default 1000)")
    p.add_argument("--seed", type=int, default=None, metavar="K",
                   help="sample demand as Poisson arrivals over 60 s with this seed "
                        "(default: the exact Zipf rates)")
    p.add_argument("--json", action="store_true", help="print the placement as JSON")


def run(args: argparse.Namespace) -> int:
    if args.workers < 0 or args.adapters < 0 or (args.slots is not None and args.slots < 1):
        print("error: --workers and --adapters must be >= 0 and --slots >= 1", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config).config.placement if args.config else ReplicaConfig()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    workers = synthetic.workers(args.workers, args.slots or config.default_slots)
    adapters = synthetic.adapters(args.adapters)
    rng = np.random.default_rng(args.seed) if args.seed is not None else None
    demand = synthetic.zipf_demand(args.adapters, args.zipf, args.total_rps, rng)
    placement = compute_placement(workers, adapters, demand, config, None, 0.0)
    report = summary(placement, workers)
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        sys.stdout.write(readable(report))
    return 0


def summary(placement: Any, workers: list[Any]) -> dict[str, Any]:
    loads = expected_loads(placement, workers)
    by_worker: dict[str, list[str]] = {w.id: [] for w in workers}
    for name, rs in placement.replica_sets.items():
        for w in rs.workers:
            by_worker[w].append(name)
    order = sorted(placement.replica_sets, key=lambda n: int(n[1:]))
    return {
        "adapters": {n: {"replicas": placement.replica_sets[n].replicas,
                         "workers": list(placement.replica_sets[n].workers),
                         "demand_rps": placement.replica_sets[n].demand_rps} for n in order},
        "workers": {w.id: {"slots": w.slots, "adapters": sorted(by_worker[w.id], key=lambda n: int(n[1:])),
                           "expected_rps": loads[w.id]} for w in workers},
        "unplaced": sorted(placement.unplaced, key=lambda n: int(n[1:])),
        "imbalance": imbalance(loads, workers),
    }


def readable(report: dict[str, Any]) -> str:
    adapters, workers = report["adapters"], report["workers"]
    placed = sum(len(a["workers"]) for a in adapters.values())
    lines = [(f"{len(workers)} workers, {len(adapters)} adapters, {placed} replicas placed, "
             f"{len(report['unplaced'])} adapters short of replicas, "
             f"imbalance (max/mean expected rps) {report['imbalance']:.3f}"), "",
             "hottest adapters:"]
    for name in list(adapters)[:10]:
        a = adapters[name]
        lines.append(f"  {name:>8}  {a['demand_rps']:9.2f} rps  replicas {a['replicas']:>3}  "
                     f"on {', '.join(a['workers'])}")
    lines += ["", "workers (slots used / slots, expected rps):"]
    for wid, w in workers.items():
        lines.append(f"  {wid:>8}  {len(w['adapters']):>4} / {w['slots']:<4} {w['expected_rps']:9.2f}")
    if report["unplaced"]:
        lines += ["", "short of replicas: " + ", ".join(report["unplaced"][:50])
                  + (" ..." if len(report["unplaced"]) > 50 else "")]
    return "\n".join(lines) + "\n"
