"""Passive outlier ejection on 5xx answers: when an answer takes a worker out of rotation.

A worker that answers 5xx again and again is broken and should get no more
traffic until the prober sees it healthy. A single request that makes every
worker fail (a poison request), repeated by one client, must not empty the
fleet for everybody: ejection needs several failures in a row, and never takes
more than a share of the pool out (Envoy's consecutive_5xx and
max_ejection_percent). Refused or cut connections are not judged here: an
unreachable worker is taken out at once.
"""

from __future__ import annotations


def should_eject(consecutive_5xx: int, *, threshold: int, down: int, pool: int, max_fraction: float) -> bool:
    """`down` workers of `pool` are already out of rotation."""
    return consecutive_5xx >= threshold and down + 1 <= max_fraction * pool
