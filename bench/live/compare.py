"""The simulator on the very workload a live run replayed, and the two set side by side.

The question is not whether the numbers match (HTTP, processes and a shared CPU add to every live
latency) but whether both rank the strategies the same way and see differences of about the same
size. So each strategy is also given as a ratio to the best baseline on each column, live and simulated:
a ratio depends on the strategies' decisions far more than on the overheads they share.
"""

from __future__ import annotations

import msgspec
import numpy as np

from bench.sim.fleet import SimFleet
from bench.sim.metrics import RunMetrics, compute
from bench.sim.scenarios import Setup, run_strategy
from bench.sim.strategies import STRATEGIES, Strategy
from bench.workloads import Requests
from router.core.picking import pick_with_room, power_of_two

OURS = "lora-router"
RATIO_COLUMNS = (("ttft_p50_ms", "TTFT p50"), ("ttft_p99_ms", "TTFT p99"), ("e2e_p99_ms", "e2e p99"),
                 ("adapter_loads", "loads/1k"), ("slot_swaps", "swaps/1k"))
"""Lower is better in every one of them."""


class Spread(Strategy):
    """lora-router-spread's decisions: the router's own picking with every worker holding every adapter,
    power of two among the workers whose batch has room for the adapter, else among all."""

    name = "spread"

    def pick(self, adapter: int) -> int:
        workers = self.fleet.workers
        return (pick_with_room(workers, adapter, self.rng) or power_of_two(workers, self.rng)).index


class FixedMap(Strategy):
    """Consistent hash with a given adapter -> worker map (vllm-router's ring, as probed)."""

    name = "consistent-hash"

    def __init__(self, fleet: SimFleet, seed: int, route_map: list[int]) -> None:
        super().__init__(fleet, seed)
        self.route_map = route_map

    def pick(self, adapter: int) -> int:
        return self.route_map[adapter]


def simulable(strategy: str, route_map: list[int] | None = None) -> bool:
    """Whether `simulate` knows the strategy (a simulator strategy may not exist yet for a live one)."""
    return strategy == Spread.name or route_map is not None or strategy in STRATEGIES


def simulate(strategy: str, requests: Requests, names: list[str], setup: Setup, seed: int,
             route_map: list[int] | None = None) -> RunMetrics:
    """`bench.sim.scenarios.run_strategy`, plus the counterparts the simulator does not list:
    the router's picking over all workers, and consistent hash on a probed map."""
    if strategy == Spread.name or route_map is not None:
        fleet = SimFleet(setup.workers, names, setup.params())
        chosen = Spread(fleet, seed) if route_map is None else FixedMap(fleet, seed, route_map)
        return compute(fleet.run(requests, chosen.route), setup.ttft_slo_ms, 0)
    return run_strategy(strategy, requests, names, setup, seed)[0]


class Comparison(msgspec.Struct, kw_only=True):
    ratios: dict[str, dict[str, dict[str, float]]]
    """strategy -> column -> {"live", "sim"}: the strategy's value over the best baseline's on that column."""
    ranking: dict[str, dict[str, list[str]]]
    """column -> {"live", "sim"}: strategies best first."""
    agree: dict[str, bool]
    """column -> the two rankings are the same."""
    pairs: dict[str, dict[str, object]]
    """column -> {"agree": pairs of strategies both order alike (or tie on one side), "of": all pairs,
    "differ": ["a vs b", ...]}: a ranking of near-equals flips on noise; the pairs say which comparison did."""


def _ratios(results: dict[str, RunMetrics], column: str) -> dict[str, float]:
    baselines = [getattr(m, column) for s, m in results.items() if s != OURS] or \
        [getattr(m, column) for m in results.values()]
    best = min(baselines)
    return {s: round(getattr(m, column) / best, 3) if best > 0 else float("nan") for s, m in results.items()}


def _ranked(results: dict[str, RunMetrics], column: str) -> list[str]:
    """Strategies best (lowest on `column`) first, ties by name."""
    return sorted(results, key=lambda s: (getattr(results[s], column), s))


def compare(live: dict[str, RunMetrics], sim: dict[str, RunMetrics]) -> Comparison:
    """`live` and `sim` keyed by the same (live) strategy names."""
    ratios: dict[str, dict[str, dict[str, float]]] = {s: {} for s in live}
    ranking: dict[str, dict[str, list[str]]] = {}
    for column, _ in RATIO_COLUMNS:
        lr, sr = _ratios(live, column), _ratios(sim, column)
        for s in live:
            ratios[s][column] = {"live": lr[s], "sim": sr[s]}
        ranking[column] = {side: _ranked(r, column) for side, r in (("live", live), ("sim", sim))}
    return Comparison(ratios=ratios, ranking=ranking,
                      agree={c: r["live"] == r["sim"] for c, r in ranking.items()},
                      pairs={c: _pairs(live, sim, c) for c, _ in RATIO_COLUMNS})


TIE = 0.05
"""Two values within 5 % of each other are a tie: a pair tied on either side agrees with any order."""


def _order(x: float, y: float) -> int:
    return 0 if abs(x - y) <= TIE * max(abs(x), abs(y)) else int(np.sign(x - y))


def _pairs(live: dict[str, RunMetrics], sim: dict[str, RunMetrics], column: str) -> dict[str, object]:
    names = list(live)
    differ = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            lo = _order(getattr(live[a], column), getattr(live[b], column))
            so = _order(getattr(sim[a], column), getattr(sim[b], column))
            if lo and so and lo != so:
                differ.append(f"{a} vs {b}")
    total = len(names) * (len(names) - 1) // 2
    return {"agree": total - len(differ), "of": total, "differ": differ}


def _rows(c: Comparison) -> list[list[str]]:
    head = ["strategy", *(f"{title} live / sim" for _, title in RATIO_COLUMNS)]
    return [head] + [[s, *(f"{c.ratios[s][col]['live']:.2f} / {c.ratios[s][col]['sim']:.2f}"
                           for col, _ in RATIO_COLUMNS)] for s in c.ratios]


def _verdicts(c: Comparison) -> list[str]:
    lines = []
    for col, title in RATIO_COLUMNS:
        pairs = c.pairs[col]
        differ = f"; differ: {', '.join(pairs['differ'])}" if pairs["differ"] else ""  # type: ignore[arg-type]
        lines.append(f"by {title}: live {' < '.join(c.ranking[col]['live'])}; sim {' < '.join(c.ranking[col]['sim'])}"
                     f" ({pairs['agree']} of {pairs['of']} pairs agree{differ})")
    return lines


def ratio_table(c: Comparison) -> str:
    """Per strategy and column: its value over the best baseline's, live and simulated; then the rankings."""
    rows = _rows(c)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    return "\n".join(lines + _verdicts(c))


def ratio_markdown(c: Comparison) -> str:
    rows = _rows(c)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join([f"**{r[0]}**" if r[0] == OURS else r[0], *r[1:]]) + " |" for r in rows[1:]]
    return "\n".join(lines + [""] + [f"- {v}" for v in _verdicts(c)])
