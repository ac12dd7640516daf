"""Choosing one worker among candidates: power of two choices on in-flight counts."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar


class Busy(Protocol):
    @property
    def inflight(self) -> int: ...


B = TypeVar("B", bound=Busy)


def power_of_two(candidates: Sequence[B], rng: random.Random) -> B:
    """Two random candidates, the less busy wins: near least-loaded without herding on one worker."""
    n = len(candidates)
    if n == 1:
        return candidates[0]
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    if j >= i:
        j += 1
    a, b = candidates[i], candidates[j]
    return a if a.inflight <= b.inflight else b
