"""One live run of one strategy: a fresh fleet, the replay, the counters, the simulator's metrics.

The measurements are put into the simulator's `Outcome` so that `bench.sim.metrics.compute` makes
every figure the same way for both; what a live run cannot observe (per-request worker, disk-read
times, placement registrations) is left empty, and `compute` does not read it.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

from bench.live import counters
from bench.live.fleet import FleetShape, LiveFleet
from bench.live.replay import Replayed, replay
from bench.live.ringprobe import ring_map
from bench.live.strategies import LiveStrategy
from bench.sim.fleet import Outcome
from bench.sim.metrics import RunMetrics, compute
from bench.workloads import Requests


class RunFacts(msgspec.Struct, kw_only=True):
    """What says whether a live run can be trusted, beside its metrics."""

    answered: int
    failed: int
    statuses: dict[str, int]
    send_lag_ms: float
    """Worst lateness of the client's sends (wall ms): large = the load generator fell behind."""
    cpu_busy: float
    """Share of the machine's CPU time busy during the replay (every process, not only ours)."""
    wall_s: float
    """Replay only, from the first send to the last answer."""
    setup_s: float
    route_map: list[int] | None = None
    """The front door's adapter -> worker index, where it hashes (probed after the run)."""


def outcome(r: Replayed, w: counters.WorkerCounters) -> Outcome:
    return Outcome(arrival=r.sent, first_token=r.first_token, finish=r.finish,
                   worker=np.full(r.sent.shape, -1, dtype=np.int32), busy_s=w.busy_s,
                   served=np.zeros(w.busy_s.shape, dtype=np.int64), slot_swaps=w.slot_swaps,
                   adapter_loads=w.adapter_loads, placement_loads=0, placement_unloads=0, load_times=np.zeros(0),
                   prefix_queries=w.prefix_queries, prefix_hits=w.prefix_hits)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


async def run_live(strategy: LiveStrategy, requests: Requests, names: list[str], shape: FleetShape, routers: int,
                   ttft_slo_ms: float) -> tuple[RunMetrics, RunFacts]:
    """Start, replay, count, stop (always). The processes' logs are removed after a clean run and kept
    (and named on stderr) after a failure."""
    root = Path(tempfile.mkdtemp(prefix=f"lora-bench-live-{strategy.name}-"))
    fleet = LiveFleet(root, shape, names)
    clean = False
    try:
        started = time.monotonic()
        fleet.start_workers()
        fronts = strategy.deploy(fleet, routers)
        setup_s = time.monotonic() - started
        moves0 = await counters.placement_moves(fronts) if strategy.places else 0
        busy0, total0 = _cpu_times()
        started = time.monotonic()
        replayed = await replay(requests, names, fronts, shape.speed)
        wall_s = time.monotonic() - started
        busy1, total1 = _cpu_times()
        worker_counts = await counters.workers(fleet.workers)
        churn = await counters.placement_moves(fronts) - moves0 if strategy.places else 0
        route_map = await ring_map(fronts[0], fleet.workers, names) if strategy.probe_ring else None
        clean = True
    finally:
        fleet.stop()
        if clean:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"lora-bench live: {strategy.name} failed; logs kept in {root}", file=sys.stderr)
    statuses: dict[str, int] = {}
    for s in replayed.status.tolist():
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    ok = int((replayed.status == 200).sum())
    facts = RunFacts(answered=ok, failed=len(requests) - ok, statuses=statuses,
                     send_lag_ms=round(replayed.send_lag_s * 1000.0, 1),
                     cpu_busy=round((busy1 - busy0) / max(1, total1 - total0), 3),
                     wall_s=round(wall_s, 2), setup_s=round(setup_s, 2), route_map=route_map)
    return compute(outcome(replayed, worker_counts), ttft_slo_ms, churn), facts
