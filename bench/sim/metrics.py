"""One run's figures, computed the same way for every strategy from the fleet's `Outcome`."""

from __future__ import annotations

import msgspec
import numpy as np

from bench.sim.bound import Bound
from bench.sim.fleet import Outcome


class RunMetrics(msgspec.Struct, kw_only=True):
    """The JSON shape of `lora-bench sim` per strategy (issue 7), plus a few more figures."""

    requests: int
    throughput_rps: float
    """Completed requests over the span from the first arrival to the last finish."""
    ttft_p50_ms: float
    ttft_p95_ms: float
    ttft_p99_ms: float
    e2e_p50_ms: float
    e2e_p95_ms: float
    e2e_p99_ms: float
    slo_attainment: float
    """Share of requests whose TTFT met the SLO."""
    adapter_loads: float
    """Adapter loads (reads from disk into a worker) per 1,000 requests."""
    slot_swaps: float
    """GPU slot swaps (host -> GPU) per 1,000 requests."""
    imbalance: float
    """Busiest worker's busy time over the mean busy time (1.0 = perfectly even)."""
    placement_churn: int
    """Adapter moves the placement made (workers newly assigned after the first placement)."""
    ttft_slo_ms: float
    prefix_hit_rate: float = 0.0
    """Share of prompt tokens found in the workers' prefix caches (vLLM's prefix_cache hits / queries)."""
    prefilled_tokens: int = 0
    """Prompt tokens prefilled: looked up in the prefix caches and not found (queries - hits)."""
    reads_over_bound: float | None = None
    """Adapter reads from disk over the workload's clairvoyant lower bound (bench.sim.bound); None: not
    compared (a live run)."""
    prefill_over_bound: float | None = None
    """Prefilled tokens over the workload's clairvoyant lower bound; None: not compared."""


def _ms(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000.0, 3) if values.size else 0.0


def compute(outcome: Outcome, ttft_slo_ms: float, churn: int) -> RunMetrics:
    done = ~np.isnan(outcome.finish)
    n = int(done.sum())
    ttft = (outcome.first_token - outcome.arrival)[done]
    e2e = (outcome.finish - outcome.arrival)[done]
    span = float(outcome.finish[done].max() - outcome.arrival.min()) if n else 0.0
    per_k = 1000.0 / max(1, len(outcome.arrival))
    mean_busy = float(outcome.busy_s.mean()) if outcome.busy_s.size else 0.0
    return RunMetrics(
        requests=n,
        throughput_rps=round(n / span, 3) if span > 0 else 0.0,
        ttft_p50_ms=_ms(ttft, 50), ttft_p95_ms=_ms(ttft, 95), ttft_p99_ms=_ms(ttft, 99),
        e2e_p50_ms=_ms(e2e, 50), e2e_p95_ms=_ms(e2e, 95), e2e_p99_ms=_ms(e2e, 99),
        slo_attainment=round(float((ttft * 1000.0 <= ttft_slo_ms).mean()), 4) if n else 0.0,
        adapter_loads=round(outcome.adapter_loads * per_k, 3),
        slot_swaps=round(outcome.slot_swaps * per_k, 3),
        imbalance=round(float(outcome.busy_s.max()) / mean_busy, 3) if mean_busy > 0 else 1.0,
        placement_churn=churn,
        ttft_slo_ms=ttft_slo_ms,
        prefix_hit_rate=round(outcome.prefix_hits / outcome.prefix_queries, 4) if outcome.prefix_queries else 0.0,
        prefilled_tokens=outcome.prefix_queries - outcome.prefix_hits,
    )


def against(metrics: RunMetrics, outcome: Outcome, bound: Bound) -> RunMetrics:
    """`metrics` with the run's adapter reads and prefilled tokens over the workload's bound, one division
    for every strategy (a bound of 0 leaves nothing to save: the ratio is 1)."""
    return msgspec.structs.replace(metrics, reads_over_bound=_over(outcome.adapter_loads, bound.adapter_reads),
                                   prefill_over_bound=_over(metrics.prefilled_tokens, bound.prefilled_tokens))


def _over(actual: int, bound: int) -> float:
    return round(actual / bound, 4) if bound else 1.0
