"""`lora-bench live`: a simulator scenario replayed over HTTP against real processes, per strategy.

Same generator and seed as `lora-bench sim`, same table columns. `--compare-sim` runs the simulator
on the same requests and fleet shape and prints both, with each strategy's ratio to the best baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import msgspec
import numpy as np
import uvloop

from bench.live.compare import compare, ratio_markdown, ratio_table, simulable, simulate
from bench.live.fleet import FleetShape
from bench.live.run import RunFacts, run_live
from bench.live.strategies import STRATEGIES
from bench.sim import report
from bench.sim.metrics import RunMetrics
from bench.sim.scenarios import SCENARIOS, Setup, Shape, names
from bench.workloads import Lengths, Requests

HELP = ("Replay a simulator scenario over HTTP against embedded etcd, simulated workers and lora-router "
        "(and vllm-router when installed); prints the simulator's table, optionally beside the simulator's.")

DEFAULT = Shape(workers=4, adapters=40, max_loras=4, requests=600, rps_per_worker=4.0)
"""Small enough for a 2-core machine: the simulator ranks placement-aware and -blind strategies apart here."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=sorted(SCENARIOS), required=True, help="a built-in workload")
    p.add_argument("--strategies", type=_strategy_list, default=list(STRATEGIES),
                   help="comma-separated, of " + ",".join(STRATEGIES) + " (default all; missing packages skipped)")
    p.add_argument("--workers", type=int, default=DEFAULT.workers, help=f"workers (default {DEFAULT.workers})")
    p.add_argument("--adapters", type=int, default=DEFAULT.adapters, help=f"adapters (default {DEFAULT.adapters})")
    p.add_argument("--max-loras", type=int, default=DEFAULT.max_loras,
                   help=f"GPU LoRA slots per worker (default {DEFAULT.max_loras})")
    p.add_argument("--requests", type=int, default=DEFAULT.requests, help=f"requests (default {DEFAULT.requests})")
    p.add_argument("--rps-per-worker", type=float, default=DEFAULT.rps_per_worker,
                   help=f"offered load per worker in virtual req/s (default {DEFAULT.rps_per_worker})")
    p.add_argument("--zipf-s", type=float, default=DEFAULT.zipf_s, help=f"Zipf exponent (default {DEFAULT.zipf_s})")
    p.add_argument("--routers", type=int, default=1,
                   help="lora-router processes sharing the load (default 1; vllm-router runs as one)")
    p.add_argument("--speed", type=_speed, default=0.5,
                   help="the workers' cost multiplier; arrivals and the router's clocks scale with it and "
                        "times are reported divided by it (default 0.5)")
    p.add_argument("--seed", type=int, default=1, help="seed of the workload and of the simulator (default 1)")
    p.add_argument("--ttft-slo-ms", type=float, default=1000.0, help="TTFT SLO, virtual ms (default 1000)")
    p.add_argument("--json", type=Path, help="write the results as JSON to this file")
    p.add_argument("--compare-sim", action="store_true", help="also simulate, print both and the ratios")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")


def _runnable(chosen: list[str]) -> tuple[list[str], list[str]]:
    """(runnable, notes): a strategy whose package is missing is a note, not a failure."""
    runnable, notes = [], []
    for name in chosen:
        why = STRATEGIES[name].missing()
        if why is None:
            runnable.append(name)
        else:
            notes.append(f"{name}: skipped, {why}")
    return runnable, notes


def _strategy_list(text: str) -> list[str]:
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    bad = next((s for s in chosen if s not in STRATEGIES), None if chosen else "(none)")
    if bad is not None:
        raise argparse.ArgumentTypeError(f"unknown strategy {bad}; choose from {', '.join(STRATEGIES)}")
    return chosen


def _speed(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be > 0 (times are divided by it)")
    return value


def run(args: argparse.Namespace) -> int:
    runnable, notes = _runnable(args.strategies)
    for note in notes:
        print(f"lora-bench live: {note}", file=sys.stderr)
    shape = Shape(workers=args.workers, adapters=args.adapters, max_loras=args.max_loras, requests=args.requests,
                  rps_per_worker=args.rps_per_worker, zipf_s=args.zipf_s)
    requests = SCENARIOS[args.scenario](np.random.default_rng(args.seed), shape, Lengths())
    adapter_names = names(shape.adapters)
    fleet = FleetShape(workers=args.workers, max_loras=args.max_loras, speed=args.speed)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        live, facts = runner.run(_live(runnable, requests, adapter_names, fleet, args))
    settings: dict[str, object] = {
        "workers": args.workers, "adapters": shape.adapters, "max_loras": args.max_loras, "requests": len(requests),
        "rps_per_worker": args.rps_per_worker, "seed": args.seed, "ttft_slo_ms": args.ttft_slo_ms,
        "speed": args.speed, "routers": args.routers, "skipped": notes,
        "runs": {s: msgspec.to_builtins(f) for s, f in facts.items()}}
    table = report.markdown if args.markdown else report.table
    print(f"live {args.scenario}: {len(requests)} requests, {args.workers} workers, {shape.adapters} adapters, "
          f"max_loras {args.max_loras}, speed {args.speed}, seed {args.seed}\n{table(live)}")
    for s, f in facts.items():
        print(f"  {s}: {f.answered} answered, {f.failed} failed, replay {f.wall_s} s wall, setup {f.setup_s} s, "
              f"machine CPU {f.cpu_busy:.0%} busy, worst send lag {f.send_lag_ms} ms")
    comparable = {s: m for s, m in live.items() if simulable(STRATEGIES[s].sim, facts[s].route_map)}
    if args.compare_sim and len(comparable) < len(live):
        uncompared = [f"{s}: the simulator has no strategy {STRATEGIES[s].sim!r}" for s in live if s not in comparable]
        for note in uncompared:
            print(f"lora-bench live: not compared: {note}", file=sys.stderr)
        settings["not_compared"] = uncompared
    if args.compare_sim and comparable:
        setup = Setup(workers=args.workers, max_loras=args.max_loras, ttft_slo_ms=args.ttft_slo_ms)
        sim = {s: simulate(STRATEGIES[s].sim, requests, adapter_names, setup, args.seed, facts[s].route_map)
               for s in comparable}
        comparison = compare(comparable, sim)
        print(f"\nsimulated, same requests (strategy: live name; simulator's counterpart in the JSON)\n{table(sim)}")
        print(f"\nratio to the best baseline on each column (live / sim)\n"
              f"{(ratio_markdown if args.markdown else ratio_table)(comparison)}")
        settings["sim"] = {s: msgspec.to_builtins(m) for s, m in sim.items()}
        settings["sim_strategies"] = {s: STRATEGIES[s].sim + (" (the front door's probed map)" if facts[s].route_map
                                                             else "") for s in comparable}
        settings["comparison"] = msgspec.to_builtins(comparison)
    if args.json is not None:
        args.json.write_text(json.dumps(report.document(args.scenario, live, settings), indent=2) + "\n")
    failed = sum(f.failed for f in facts.values())
    return 0 if live and failed == 0 else 1


async def _live(strategies: list[str], requests: Requests, adapter_names: list[str], fleet: FleetShape,
                args: argparse.Namespace) -> tuple[dict[str, RunMetrics], dict[str, RunFacts]]:
    live: dict[str, RunMetrics] = {}
    facts: dict[str, RunFacts] = {}
    for name in strategies:
        print(f"lora-bench live: {name} ...", file=sys.stderr, flush=True)
        live[name], facts[name] = await run_live(STRATEGIES[name], requests, adapter_names, fleet, args.routers,
                                                 args.ttft_slo_ms)
    return live, facts
