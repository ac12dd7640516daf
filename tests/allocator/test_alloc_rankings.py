"""The cached ranking prefixes stay exact prefixes of the full HRW ranking through membership changes."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from allocator import hrw, rankings
from allocator.model import Adapter, Worker
from allocator.rankings import Rankings, _Class, _rank, _screen


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


def _churn(rng: random.Random, step: int, workers: list[Worker], pool: list[Worker], most: int) -> list[Worker]:
    """Odd steps: 1 to `most` workers leave; even steps: as many of the pool's others join."""
    if step % 2:
        return rng.sample(workers, len(workers) - rng.randint(1, most))
    present = {w.id for w in workers}
    return workers + rng.sample([w for w in pool if w.id not in present], rng.randint(1, most))


def _candidates(rng: random.Random, workers: int, weights: list[float], adapters: int
                ) -> tuple[list[Worker], list[Adapter]]:
    """Workers of two base models and two rank limits, adapters of both models and two ranks."""
    pool = [Worker(id=f"w{i}", base_model=rng.choice(["m", "n"]), weight=rng.choice(weights),
                   max_lora_rank=rng.choice([8, 64])) for i in range(workers)]
    return pool, [Adapter(name=f"a{i}", base_model=rng.choice(["m", "n"]), rank=rng.choice([8, 16]))
                  for i in range(adapters)]


def test_prefixes_stay_exact_through_joins_and_leaves() -> None:
    rng = random.Random(3)
    pool, adapters = _candidates(rng, 60, [0.5, 1.0, 3.0], 120)
    rankings = Rankings(depth=6)
    workers = pool[:30]
    for step in range(12):
        rankings.sync(workers, adapters)
        for a in adapters[::7]:
            rankings.full(a.name)  # some full rankings cached, to be kept up to date too
        _check(rankings, workers, adapters)
        workers = _churn(rng, step, workers, pool, 4)


def test_mass_departures_rebuild_and_stay_exact() -> None:
    adapters = [Adapter(name=f"a{i}", base_model="m") for i in range(50)]
    first = [Worker(id=f"old{i}", base_model="m") for i in range(100)]
    then = [Worker(id=f"new{i}", base_model="m") for i in range(20)] + first[:10]
    rankings = Rankings(depth=4)
    rankings.sync(first, adapters)
    rankings.sync(then, adapters)
    assert len(rankings.ids) == len(then)  # departed workers were compacted away
    _check(rankings, then, adapters)


def _tied_hashes(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """Random pair hashes with ties at the top of every row: whole columns repeated (equal
    hashes) and each row's best hashes copied with other low 12 bits (equal u, so equal scores)."""
    h = rng.integers(0, 2**64, (rows, n), dtype=np.uint64, endpoint=False)
    h[:, n - 20:] = h[:, :20]
    for r in range(rows):
        best = np.argsort(h[r])[::-1][:12]
        low = rng.integers(0, 1 << 12, 6, dtype=np.uint64)
        h[r, best[6:]] = (h[r, best[:6]] & np.uint64(~0xFFF & (2**64 - 1))) | low
    return h


def _screened_top(hashes: np.ndarray, cls: _Class, depth: int) -> tuple[np.ndarray, np.ndarray]:
    mixed = hrw.finish(hashes.copy())  # the last step undoes itself: this is what `hrw.mix` gives
    rows, cols, kept = _screen(mixed, np.empty_like(mixed), cls, depth)
    return _rank(rows, cols, kept, cls, len(hashes), depth)


def _brute_top(hashes: np.ndarray, cls: _Class, depth: int) -> tuple[np.ndarray, np.ndarray]:
    exact = hrw.scores_from_hashes(hashes, cls.weights)
    cols = np.array([hrw.order(row, cls.id_order)[:depth] for row in exact])
    return cols, np.take_along_axis(exact, cols, axis=1)


@pytest.mark.parametrize("sigmas", [rankings.SCREEN_SIGMAS, -3.0])  # -3: most rows fall short of the threshold
@pytest.mark.parametrize("depth", [1, 5, 32, 400])
def test_hash_screen_agrees_with_score_screen_and_brute_force(monkeypatch: pytest.MonkeyPatch, depth: int,
                                                             sigmas: float) -> None:
    monkeypatch.setattr(rankings, "SCREEN_SIGMAS", sigmas)
    rng = np.random.default_rng(depth)
    n = 300
    ids = [f"w{i}" for i in rng.permutation(n)]
    for weights in (np.full(n, 1.5), rng.choice([0.5, 1.0, 3.0], n)):
        weights[n - 20:] = weights[:20]  # repeated columns tie exactly
        hashes = _tied_hashes(rng, 40, n)
        cls = _Class(list(range(n)), np.zeros(n, dtype=np.uint64), weights, ids)
        expected = _brute_top(hashes, cls, depth)
        for uniform in ([True, False] if cls.uniform else [False]):
            cls.uniform = uniform
            cols, scores = _screened_top(hashes, cls, depth)
            assert np.array_equal(cols, expected[0]) and np.array_equal(scores, expected[1])


def test_only_equal_sane_weights_screen_by_hash() -> None:
    def uniform(weights: list[float]) -> bool:
        n = len(weights)
        ids = [str(i) for i in range(n)]
        return _Class(list(range(n)), np.zeros(n, dtype=np.uint64), np.array(weights), ids).uniform
    assert uniform([2.0, 2.0]) and uniform([1e-9, 1e-9])
    assert not uniform([1.0, 2.0]) and not uniform([]) and not uniform([0.0, 0.0]) and not uniform([math.inf])


def test_equal_and_mixed_weight_classes_stay_exact_through_joins_and_leaves() -> None:
    """Classes large enough for the screens to drop candidates: equal weights (by hash), mixed (by score)."""
    rng = random.Random(11)
    pool = [Worker(id=f"u{i}", base_model="u", weight=2.0) for i in range(260)]
    pool += [Worker(id=f"m{i}", base_model="m", weight=rng.choice([0.5, 1.0, 3.0])) for i in range(260)]
    adapters = [Adapter(name=f"a{i}", base_model=rng.choice(["u", "m"])) for i in range(150)]
    rankings_ = Rankings(depth=6)
    workers = pool[::2]
    for step in range(6):
        rankings_.sync(workers, adapters)
        for a in adapters[::11]:
            rankings_.full(a.name)
        _check(rankings_, workers, adapters)
        workers = _churn(rng, step, workers, pool, 5)


def test_table_and_ranks_follow_every_change() -> None:
    """The rows as arrays (what a re-plan reads for 100,000 adapters at once) and the rank of any
    worker, full rankings included, stay exact through joins, leaves of one and of many at once,
    changed workers and catalog edits."""
    rng = random.Random(5)
    pool, catalog = _candidates(rng, 90, [1.0, 1.0, 2.5], 160)
    rankings_ = Rankings(depth=5)
    workers, adapters = pool[:40], catalog[:120]
    for step in range(14):
        rankings_.sync(workers, adapters)
        table = rankings_.table()
        for j, a in enumerate(adapters):
            row = rankings_.rows[a.name]
            n = len(row.idx)
            assert table.idx[j, :n].tolist() == row.idx and bool(np.all(table.idx[j, n:] == -1))
            assert (table.length[j], table.complete[j]) == (n, row.complete)
            assert table.floor[j] == (-math.inf if row.complete or not n else row.scores[-1])
        for a in adapters[step % 3::3]:
            expected = [w.id for w in hrw.rank_workers(a.name, [w for w in workers if w.base_model == a.base_model
                                                                 and w.max_lora_rank >= a.rank])]
            everyone = list(range(len(rankings_.ids)))
            assert rankings_.ranks(a.name, everyone) == [
                expected.index(rankings_.ids[i]) if rankings_.workers[i] is not None
                and rankings_.ids[i] in expected else -1 for i in everyone]
        change = step % 5
        present = {w.id for w in workers}
        if change == 0:
            workers = workers + rng.sample([w for w in pool if w.id not in present], rng.randint(1, 3))
        elif change == 1:
            workers = rng.sample(workers, len(workers) - rng.randint(1, 2))
        elif change == 2:
            workers = rng.sample(workers, len(workers) - rng.randint(6, 9))  # many at once
        elif change == 3:
            i = rng.randrange(len(workers))
            heavier = Worker(id=workers[i].id, base_model=workers[i].base_model, weight=4.0)
            workers = [*workers[:i], heavier, *workers[i + 1:]]
        else:  # some adapters go, some come, one changes its rank
            edited = [*rng.sample(catalog, 100), Adapter(name="a0", base_model="n", rank=64)]
            adapters = list({a.name: a for a in edited}.values())
