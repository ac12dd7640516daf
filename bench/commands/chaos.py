"""`lora-bench chaos`: break a real local fleet, scenario by scenario, and print what was lost."""

from __future__ import annotations

import argparse
import asyncio
import sys

import uvloop

from bench.chaos.engine import run_scenarios
from bench.chaos.report import details, table, write_json
from bench.chaos.scenarios import DEFAULT, SCENARIOS

HELP = ("Inject faults (worker, etcd and leader kills, lost adapters, bad workers, a soak) into real "
        "processes under load; print requests sent/succeeded/retried/failed and recovery time per scenario.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", action="append", default=None, metavar="NAME",
                   help=f"one of {', '.join(SCENARIOS)}; repeatable or comma-separated "
                        f"(default: {', '.join(DEFAULT)})")
    p.add_argument("--quick", action="store_true", help="smaller rates and shorter phases (what CI runs)")
    p.add_argument("--soak-minutes", type=float, default=10.0, help="length of the soak's load (default 10)")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write every result here")


def run(args: argparse.Namespace) -> int:
    names = [n.strip() for arg in (args.scenario or [",".join(DEFAULT)]) for n in arg.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or args.soak_minutes <= 0:
        print(f"lora-bench chaos: unknown scenario {unknown} (known: {', '.join(SCENARIOS)}) "
              "or --soak-minutes <= 0", file=sys.stderr)
        return 2
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        results = runner.run(run_scenarios(names, quick=args.quick, soak_minutes=args.soak_minutes))
    print(table(results))
    print(details(results))
    if args.json_out:
        write_json(args.json_out, results)
    return 0 if all(r.passed for r in results) else 1
