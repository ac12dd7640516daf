"""The named scenarios and one run of one strategy over a workload.

A scenario is a fleet shape plus a workload; its default offered load is a
fraction of the fleet's capacity under the engine's default costs, so that
placement, not raw overload, decides who wins. `--workers/--adapters/...`
override the shape and the rate scales with the worker count.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import numpy as np

from allocator.config import ReplicaConfig
from bench import workloads
from bench.perfmodel import PerfParams
from bench.sim.fleet import Outcome, SimFleet
from bench.sim.metrics import RunMetrics, compute
from bench.sim.strategies import STRATEGIES, ControlTiming
from bench.workloads import Lengths, Requests


class Shape(msgspec.Struct, frozen=True, kw_only=True):
    workers: int = 16
    adapters: int = 1000
    max_loras: int = 8
    requests: int = 40000
    rps_per_worker: float = 6.0
    """Offered load per worker: what a worker serves when placement keeps its adapters resident, well
    beyond what it serves when every request may need a load (the on-demand baselines saturate)."""
    zipf_s: float = 1.1

    @property
    def rps(self) -> float:
        return self.rps_per_worker * self.workers


Builder = Callable[[np.random.Generator, Shape, Lengths], Requests]


def _zipf(rng: np.random.Generator, s: Shape, lengths: Lengths) -> Requests:
    return workloads.concat(workloads.zipf(rng, s.requests, s.adapters, s.zipf_s, s.rps, lengths))


def _flash_crowd(rng: np.random.Generator, s: Shape, lengths: Lengths) -> Requests:
    span = s.requests / s.rps
    return workloads.concat(workloads.flash_crowd(rng, s.requests, s.adapters, s.zipf_s, s.rps * 0.8,
                                                  start_s=span * 0.3, duration_s=span * 0.3,
                                                  crowd_rps=s.rps * 0.5, lengths=lengths))


def _popularity_shift(rng: np.random.Generator, s: Shape, lengths: Lengths) -> Requests:
    span = s.requests / s.rps
    return workloads.concat(workloads.popularity_shift(rng, s.requests, s.adapters, s.zipf_s, s.rps,
                                                       period_s=span / 4, shift=max(1, s.adapters // 10),
                                                       lengths=lengths))


def _diurnal(rng: np.random.Generator, s: Shape, lengths: Lengths) -> Requests:
    span = s.requests / s.rps
    return workloads.concat(workloads.diurnal(rng, s.requests, s.adapters, s.zipf_s, s.rps * 0.8,
                                              period_s=span / 2, swing=0.5, lengths=lengths))


def _mmpp(rng: np.random.Generator, s: Shape, lengths: Lengths) -> Requests:
    return workloads.concat(workloads.mmpp(rng, s.requests, s.adapters, s.zipf_s, s.rps * 0.5, s.rps * 1.3,
                                           mean_low_s=20.0, mean_high_s=8.0, lengths=lengths))


def _chat(rng: np.random.Generator, s: Shape, lengths: Lengths) -> Requests:
    return workloads.chat(rng, s.requests, s.adapters, s.zipf_s, s.rps * CHAT_LOAD, workloads.Chat(), lengths)


CHAT_LOAD = 0.5
"""Chat prompts are long (a system prompt and a growing history): at the same request rate as the other
scenarios every strategy that prefills them whole would saturate; at half of it the cache decides."""

SCENARIOS: dict[str, Builder] = {
    "zipf": _zipf,
    "flash-crowd": _flash_crowd,
    "popularity-shift": _popularity_shift,
    "diurnal": _diurnal,
    "mmpp": _mmpp,
    "chat": _chat,
}


class Setup(msgspec.Struct, frozen=True, kw_only=True):
    """Everything but the workload that a run depends on."""

    workers: int
    max_loras: int
    ttft_slo_ms: float = 1000.0
    tick_s: float = 2.0
    reconcile_s: float = 0.5
    config: ReplicaConfig = msgspec.field(default_factory=ReplicaConfig)
    fast_forward: bool = True
    """Coast through identical decode steps (the same results; False steps one by one, for the tests)."""

    def params(self) -> PerfParams:
        return PerfParams(max_loras=self.max_loras, max_cpu_loras=2 * self.max_loras)


def names(n: int) -> list[str]:
    return [f"a{i}" for i in range(n)]


def run_strategy(strategy: str, requests: Requests, adapter_names: list[str], setup: Setup, seed: int,
                 progress: Callable[[int], None] | None = None) -> tuple[RunMetrics, Outcome]:
    fleet = SimFleet(setup.workers, adapter_names, setup.params(), setup.fast_forward)
    chosen = STRATEGIES[strategy](fleet, seed, ControlTiming(setup.tick_s, setup.reconcile_s), setup.config)
    outcome = fleet.run(requests, chosen.route, progress)
    return compute(outcome, setup.ttft_slo_ms, getattr(chosen, "churn", 0)), outcome
