"""Synthetic fleets for `lora-router plan`, the benchmark and the tests.

Names are fixed so runs compare: workers `w0` ... `w{N-1}` (so N+1 workers is
exactly one more), adapters `a0` ... `a{A-1}` with Zipf demand, `a0` hottest.
"""

from __future__ import annotations

import numpy as np

from allocator.model import Adapter, Demand, Worker

BASE_MODEL = "base"


def workers(n: int, slots: int, start: int = 0) -> list[Worker]:
    return [Worker(id=f"w{i}", base_model=BASE_MODEL, slots=slots) for i in range(start, start + n)]


def adapters(n: int) -> list[Adapter]:
    return [Adapter(name=f"a{i}", base_model=BASE_MODEL) for i in range(n)]


def zipf_demand(n: int, s: float, total_rps: float, rng: np.random.Generator | None = None,
                window_s: float = 60.0) -> dict[str, Demand]:
    """Demand of a0..a{n-1} proportional to 1/(i+1)^s; with `rng`, the rates a router would
    measure from Poisson arrivals over `window_s` seconds."""
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    rates = total_rps * weights / weights.sum()
    if rng is not None:
        rates = rng.poisson(rates * window_s) / window_s
    return {f"a{i}": Demand(rps=float(r)) for i, r in enumerate(rates)}
