"""The cached ranking prefixes stay exact prefixes of the full HRW ranking through membership changes."""

from __future__ import annotations

import math
import random

import numpy as np

from allocator import hrw
from allocator.model import Adapter, Worker
from allocator.rankings import Rankings


def test_own_log_is_within_a_few_ulps_of_libm() -> None:
    rng = np.random.default_rng(0)
    u = np.concatenate([rng.random(20000), [2.0**-53, 0.5, 1 - 2.0**-53, math.sqrt(0.5)]])
    ours = hrw.ln(u)
    for x, y in zip(u.tolist(), ours.tolist(), strict=True):
        assert abs(y - math.log(x)) <= 4 * math.ulp(math.log(x)) + 1e-300


def _check(rankings: Rankings, workers: list[Worker], adapters: list[Adapter]) -> None:
    for a in adapters:
        expected = [w.id for w in hrw.rank_workers(a.name, [w for w in workers if w.base_model == a.base_model
                                                             and w.max_lora_rank >= a.rank])]
        row = rankings.rows[a.name]
        prefix = [rankings.ids[i] for i in row.idx]
        assert prefix == expected[:len(prefix)]
        assert row.complete == (len(prefix) == len(expected))
        assert [rankings.ids[i] for i in rankings.full(a.name)] == expected


def test_prefixes_stay_exact_through_joins_and_leaves() -> None:
    rng = random.Random(3)
    pool = [Worker(id=f"w{i}", base_model=rng.choice(["m", "n"]), weight=rng.choice([0.5, 1.0, 3.0]),
                   max_lora_rank=rng.choice([8, 64])) for i in range(60)]
    adapters = [Adapter(name=f"a{i}", base_model=rng.choice(["m", "n"]), rank=rng.choice([8, 16]))
                for i in range(120)]
    rankings = Rankings(depth=6)
    workers = pool[:30]
    for step in range(12):
        rankings.sync(workers, adapters)
        for a in adapters[::7]:
            rankings.full(a.name)  # some full rankings cached, to be kept up to date too
        _check(rankings, workers, adapters)
        if step % 2:
            workers = rng.sample(workers, len(workers) - rng.randint(1, 4))
        else:
            present = {w.id for w in workers}
            workers = workers + rng.sample([w for w in pool if w.id not in present], rng.randint(1, 4))


def test_mass_departures_rebuild_and_stay_exact() -> None:
    adapters = [Adapter(name=f"a{i}", base_model="m") for i in range(50)]
    first = [Worker(id=f"old{i}", base_model="m") for i in range(100)]
    then = [Worker(id=f"new{i}", base_model="m") for i in range(20)] + first[:10]
    rankings = Rankings(depth=4)
    rankings.sync(first, adapters)
    rankings.sync(then, adapters)
    assert len(rankings.ids) == len(then)  # departed workers were compacted away
    _check(rankings, then, adapters)
