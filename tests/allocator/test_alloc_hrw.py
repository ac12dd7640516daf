"""HRW scoring: the encoding, the numpy path against the xxhash library, ranking and weighted picks."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import numpy as np
import xxhash
from alloc_helpers import REPO
from hypothesis import given, settings
from hypothesis import strategies as st

from allocator import hrw
from allocator.model import Worker

names = st.text(min_size=0, max_size=40)


def test_frame_is_versioned_and_length_prefixed() -> None:
    assert hrw.frame("ab") == b"lr1" + struct.pack("<I", 2) + b"ab"
    assert hrw.frame("é") == b"lr1" + struct.pack("<I", 2) + "é".encode()


def test_fields_cannot_run_into_each_other() -> None:
    assert hrw.pair_hash("a", "bc") != hrw.pair_hash("ab", "c")
    assert hrw.pair_hash("x", "y") != hrw.pair_hash("y", "x")


@settings(max_examples=60, deadline=None)
@given(st.lists(names, min_size=1, max_size=6), st.lists(names, min_size=1, max_size=6),
       st.lists(st.floats(min_value=0.1, max_value=10.0), min_size=6, max_size=6))
def test_numpy_path_is_bit_exact_with_xxhash(adapters: list[str], workers: list[str],
                                             weights: list[float]) -> None:
    hashes = hrw.pair_hashes(hrw.adapter_states(hrw.keys(adapters)), hrw.worker_lanes(hrw.keys(workers)))
    w = np.array(weights[:len(workers)])
    scores = hrw.scores_from_hashes(hashes, w)
    for i, a in enumerate(adapters):
        for j, wid in enumerate(workers):
            expected = xxhash.xxh64_intdigest(struct.pack("<QQ", hrw.key(a), hrw.key(wid)))
            assert int(hashes[i, j]) == expected
            assert scores[i, j] == hrw.score(a, wid, float(w[j]))


def test_mix_leaves_only_the_low_32_bits_to_finish() -> None:
    """The bulk screen compares `mix`'s output with thresholds whose low 32 bits are zero."""
    rng = np.random.default_rng(5)
    states, lanes = (rng.integers(0, 2**64, size, dtype=np.uint64, endpoint=False) for size in (7, 50))
    mixed = hrw.mix(hrw.rotate(states), hrw.rotate(lanes), np.empty((7, 50), np.uint64), np.empty((7, 50), np.uint64))
    hashes = hrw.pair_hashes(states, lanes)
    assert np.array_equal(mixed >> np.uint64(32), hashes >> np.uint64(32))
    assert np.array_equal(hrw.finish(mixed.copy()), hashes)
    assert np.array_equal(hrw.finish(hashes.copy()), mixed)  # the last step undoes itself


def test_u_is_strictly_inside_zero_one_at_the_extremes() -> None:
    hashes = np.array([[0, 2**64 - 1]], dtype=np.uint64)
    scores = hrw.scores_from_hashes(hashes, np.ones(2))
    assert np.all(np.isfinite(scores)) and np.all(scores > 0)


def test_rank_workers_orders_by_score_then_id() -> None:
    workers = [Worker(id=f"w{i}", base_model="m", weight=1.0 + (i % 3)) for i in range(40)]
    ranked = hrw.rank_workers("adapter-x", workers)
    keys = [(-hrw.score("adapter-x", w.id, w.weight), w.id) for w in ranked]
    assert keys == sorted(keys)
    assert sorted(w.id for w in ranked) == sorted(w.id for w in workers)


def test_ties_are_broken_by_worker_id() -> None:
    workers = [Worker(id=i, base_model="m", weight=0.0) for i in ["c", "a", "b"]]
    assert [w.id for w in hrw.rank_workers("any", workers)] == ["a", "b", "c"]


def test_rank_workers_ignores_input_order() -> None:
    workers = [Worker(id=f"w{i}", base_model="m") for i in range(50)]
    assert hrw.rank_workers("a", workers) == hrw.rank_workers("a", list(reversed(workers)))
    assert hrw.rank_workers("a", []) == []


def test_weighted_workers_win_in_proportion_to_weight() -> None:
    workers = [Worker(id="light-1", base_model="m"), Worker(id="light-2", base_model="m"),
               Worker(id="heavy", base_model="m", weight=2.0)]
    firsts = [hrw.rank_workers(f"a{i}", workers)[0].id for i in range(8000)]
    share = firsts.count("heavy") / len(firsts)
    assert 0.47 < share < 0.53


def test_pick_weighted_shares_and_stickiness() -> None:
    users = [f"user-{i}" for i in range(8000)]
    before = {u: hrw.pick_weighted(u, {"base": 3.0, "canary": 1.0}) for u in users}
    assert 0.22 < sum(v == "canary" for v in before.values()) / len(users) < 0.28
    after = {u: hrw.pick_weighted(u, {"base": 3.0, "canary": 2.0}) for u in users}
    assert all(after[u] == "canary" for u in users if before[u] == "canary")
    assert 0.37 < sum(v == "canary" for v in after.values()) / len(users) < 0.43


def test_pick_weighted_needs_a_choice() -> None:
    try:
        hrw.pick_weighted("u", {})
    except ValueError as exc:
        assert "at least one" in str(exc)
    else:
        raise AssertionError("empty choices were accepted")


def test_scores_are_identical_across_processes_and_hash_seeds() -> None:
    code = ("import json; from allocator import hrw; "
            "print(json.dumps([hrw.score(f'a{i}', f'w{j}', 1.5) for i in range(20) for j in range(20)]))")
    outputs = set()
    for seed in ("0", "1", "12345", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                             text=True, check=True, timeout=60).stdout
        outputs.add(out)
    assert len(outputs) == 1
    assert json.loads(outputs.pop())[0] == hrw.score("a0", "w0", 1.5)
