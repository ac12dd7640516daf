"""Tables, JSON and plots of simulator results; the same numbers feed all three."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec
import numpy as np

from bench.sim.bound import Bound
from bench.sim.fleet import Outcome
from bench.sim.metrics import RunMetrics

COLUMNS = (
    ("throughput_rps", "req/s", "{:.1f}"),
    ("ttft_p50_ms", "TTFT p50 ms", "{:.0f}"),
    ("ttft_p99_ms", "TTFT p99 ms", "{:.0f}"),
    ("e2e_p99_ms", "e2e p99 ms", "{:.0f}"),
    ("slo_attainment", "SLO", "{:.1%}"),
    ("adapter_loads", "loads/1k", "{:.1f}"),
    ("slot_swaps", "swaps/1k", "{:.1f}"),
    ("imbalance", "imbalance", "{:.2f}"),
    ("placement_churn", "churn", "{:d}"),
    ("prefix_hit_rate", "prefix hits", "{:.1%}"),
    ("reads_over_bound", "reads/bound", "{:.2f}"),
    ("prefill_over_bound", "prefill/bound", "{:.2f}"),
)


def document(scenario: str, results: Mapping[str, RunMetrics], extra: Mapping[str, object]) -> dict[str, object]:
    """The JSON document: `{"scenario", "results": {strategy: metrics}}` plus the run's settings."""
    return {"scenario": scenario, **extra, "results": {s: msgspec.to_builtins(m) for s, m in results.items()}}


def bound_line(bound: Bound) -> str:
    """What the reads/bound and prefill/bound columns divide by."""
    return (f"clairvoyant lower bound (bench/sim/bound.py): {bound.adapter_reads:,} adapter reads, "
            f"{bound.prefilled_tokens:,} prefilled tokens")


SPEED = "sim req/s"
"""The simulator's own speed per strategy: simulated requests per wall-clock second. Kept out of
RunMetrics and the JSON, which must not change from one run of a seed to the next."""


def _cells(m: RunMetrics) -> list[str]:
    """A figure not measured in this run (None) shows as a dash."""
    return ["–" if (value := getattr(m, key)) is None else fmt.format(value) for key, _, fmt in COLUMNS]


def _rows(results: Mapping[str, RunMetrics], speeds: Mapping[str, float] | None) -> list[list[str]]:
    head = ["strategy", *(title for _, title, _ in COLUMNS)] + ([SPEED] if speeds is not None else [])
    rows = [head]
    for s, m in results.items():
        rows.append([s, *_cells(m)] + ([f"{speeds[s]:,.0f}"] if speeds is not None else []))
    return rows


def table(results: Mapping[str, RunMetrics], speeds: Mapping[str, float] | None = None) -> str:
    """A plain-text table for the terminal."""
    rows = _rows(results, speeds)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
                     for r in rows)


def markdown(results: Mapping[str, RunMetrics], speeds: Mapping[str, float] | None = None) -> str:
    head, *body = _rows(results, speeds)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in body:
        name = f"**{row[0]}**" if row[0] == "lora-router" else row[0]
        lines.append("| " + " | ".join([name, *row[1:]]) + " |")
    return "\n".join(lines)


def plot(path: Path, title: str, outcomes: Mapping[str, Outcome]) -> None:
    """Three panels: TTFT CDF per strategy, cumulative adapter loads over time, per-worker utilisation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cdf, loads, util) = plt.subplots(1, 3, figsize=(13, 3.6), dpi=72)
    for name, o in outcomes.items():
        done = ~np.isnan(o.finish)
        ttft = np.sort((o.first_token - o.arrival)[done]) * 1000.0
        style = {"linewidth": 2.4 if name == "lora-router" else 1.2}
        cdf.plot(ttft, np.linspace(0, 1, ttft.size, endpoint=False), label=name, **style)
        loads.plot(o.load_times, np.arange(1, o.load_times.size + 1), **style)
        span = float(np.nanmax(o.finish) - o.arrival.min()) if done.any() else 1.0
        util.plot(np.sort(o.busy_s / span)[::-1], marker=".", **style)
    cdf.set(xscale="log", xlabel="TTFT (ms)", ylabel="fraction of requests", title="TTFT CDF")
    loads.set(xlabel="virtual time (s)", ylabel="adapter loads (cumulative)", title="adapter loads")
    util.set(xlabel="worker (busiest first)", ylabel="busy fraction", title="per-worker utilisation", ylim=(0, 1.05))
    fig.legend(loc="lower center", ncol=len(outcomes), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
