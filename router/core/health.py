"""When a worker leaves rotation and when it comes back: the rules `FleetState` applies to its events.

A worker that answers 5xx again and again is broken and should get no more
traffic until a probe sees it healthy. A single request that makes every
worker fail (a poison request), repeated by one client, must not empty the
fleet for everybody: ejection needs several failures in a row, and never takes
more than a share of the pool out (Envoy's consecutive_5xx and
max_ejection_percent). A refused, cut or silent connection is not judged so
gently: an unreachable worker is taken out at once (its probe brings it back).
"""

from __future__ import annotations

import msgspec


class HealthRules(msgspec.Struct, frozen=True, kw_only=True):
    """The config's `control` knobs the health state machine reads (router.config.ControlConfig)."""

    down_after_failures: int = 3
    max_ejected_fraction: float = 0.5
    probe_s: float = 2.0


def should_eject(consecutive_5xx: int, *, threshold: int, down: int, pool: int, max_fraction: float) -> bool:
    """`down` workers of `pool` are already out of rotation."""
    return consecutive_5xx >= threshold and down + 1 <= max_fraction * pool
