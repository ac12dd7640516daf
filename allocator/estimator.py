"""Demand smoothing: exponentially weighted averages of arrival rate and in-flight requests.

Why asymmetric: a rise in demand must reach the sizing step at once (a spike
that waits for an average to catch up is served by too few replicas), while a
fall should fade slowly, so that short lulls do not shrink replica sets and
re-grow them a moment later. With `rise_tau_s = 0` a rise is taken as is.
The state is a plain `Demand`; time steps are passed in, never read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from allocator.model import Demand

FORGET_BELOW = 1e-3
"""An estimate this small (rps and in-flight) is dropped: the adapter counts as idle."""


def smooth(previous: float, sample: float, dt: float, rise_tau_s: float, fall_tau_s: float) -> float:
    """One EWMA step over `dt` seconds; the time constant depends on the direction."""
    if dt <= 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    tau = rise_tau_s if sample > previous else fall_tau_s
    alpha = 1.0 if tau <= 0 else -math.expm1(-dt / tau)
    return previous + alpha * (sample - previous)


def update(state: Demand, arrivals: float, inflight: float, dt: float,
           rise_tau_s: float, fall_tau_s: float) -> Demand:
    """Fold one interval's arrival count and current in-flight count into the estimate."""
    if dt <= 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    return Demand(rps=smooth(state.rps, arrivals / dt, dt, rise_tau_s, fall_tau_s),
                  inflight=smooth(state.inflight, inflight, dt, rise_tau_s, fall_tau_s))


def update_all(states: Mapping[str, Demand], arrivals: Mapping[str, float],
               inflight: Mapping[str, float], dt: float, rise_tau_s: float,
               fall_tau_s: float) -> dict[str, Demand]:
    """`update` for every adapter seen in any input; idle estimates that decayed away are dropped."""
    out: dict[str, Demand] = {}
    for name in sorted(states.keys() | arrivals.keys() | inflight.keys()):
        d = update(states.get(name, Demand()), arrivals.get(name, 0), inflight.get(name, 0), dt,
                   rise_tau_s, fall_tau_s)
        if d.rps >= FORGET_BELOW or d.inflight >= FORGET_BELOW:
            out[name] = d
    return out
