"""Power of two choices: never the busier of the two it looks at; spreads load over candidates."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from router.core.picking import power_of_two


@dataclass
class W:
    name: str
    inflight: int


@given(st.lists(st.integers(0, 50), min_size=1, max_size=20), st.integers(0, 2**32))
def test_never_picks_the_busiest_when_there_is_a_choice(loads: list[int], seed: int) -> None:
    ws = [W(str(i), n) for i, n in enumerate(loads)]
    chosen = power_of_two(ws, random.Random(seed))
    assert chosen in ws
    if len(ws) > 1 and len(set(loads)) > 1:
        assert chosen.inflight < max(loads) or loads.count(max(loads)) > 1


def test_idle_candidates_share_the_load() -> None:
    ws = [W(str(i), 0) for i in range(4)]
    rng = random.Random(1)
    counts = Counter(power_of_two(ws, rng).name for _ in range(4000))
    assert set(counts) == {"0", "1", "2", "3"}
    assert min(counts.values()) > 700


def test_a_saturated_worker_is_avoided() -> None:
    ws = [W("busy", 100), W("a", 1), W("b", 2)]
    rng = random.Random(3)
    picks = Counter(power_of_two(ws, rng).name for _ in range(1000))
    assert picks["busy"] == 0
