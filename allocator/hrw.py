"""Weighted rendezvous (HRW) hashing over a stable, framed, versioned encoding.

Why this encoding: every router replica, in any process and on any platform,
must rank workers identically, and a name must never be confused with a
prefix of another (Dynamo's unframed legacy encoding can). Each name is hashed
once on its own frame, and the pair hash mixes the two 64-bit keys with XXH64
over exactly 16 bytes::

    key(name)      = xxh64(b"lr1" + u32le(len(utf8(name))) + utf8(name))
    pair(a, w)     = xxh64(u64le(key(a)) + u64le(key(w)))
    u              = (2 * (pair >> 12) + 1) / 2**53        # strictly inside (0, 1)
    score(a, w, x) = -x / ln(u)                            # x = the worker's weight

The two-stage form is what lets the bulk path score millions of pairs with
numpy: XXH64 of a 16-byte message is a handful of 64-bit multiplies and
rotations, re-implemented below and checked bit-for-bit against the xxhash
library in the tests. `ln` is our own series built from IEEE-exact operations
(frexp, +, *, /), not the platform's log: numpy's SIMD log and libm's differ
in the last bit on some inputs and CPUs, and a router replica on another
machine must not rank two workers differently. Ranks are by score
descending, ties by worker id ascending; the scalar `score`, `rank_workers`
and the bulk placement all run the same code.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import numpy as np
import xxhash

from allocator.model import Worker

VERSION = b"lr1"

_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5
_M64 = (1 << 64) - 1
_U_SCALE = 2.0**-53
_LN2 = 0.6931471805599453
_SQRT_HALF = 0.7071067811865476
_SERIES = [1.0 / (2 * k + 1) for k in range(12)]
"""ln(m) = 2s(1 + z/3 + z^2/5 + ...), s = (m-1)/(m+1), z = s^2 <= 0.0295: 12 terms reach 1e-17."""


def ln(x: np.ndarray) -> np.ndarray:
    """Natural log of positive floats, bit-identical on every platform (about 1 ulp from the true value)."""
    m, e = np.frexp(x)
    small = m < _SQRT_HALF
    m = np.where(small, m * 2.0, m)
    exponent = (e - small).astype(np.float64)
    s = (m - 1.0) / (m + 1.0)
    z = s * s
    p = np.full_like(z, _SERIES[-1])
    for c in reversed(_SERIES[:-1]):
        p *= z
        p += c
    logs: np.ndarray = exponent * _LN2 + 2.0 * s * p
    return logs


def frame(name: str) -> bytes:
    """The versioned, length-prefixed bytes hashed for one name."""
    data = name.encode("utf-8")
    return VERSION + struct.pack("<I", len(data)) + data


def key(name: str) -> int:
    return xxhash.xxh64_intdigest(frame(name))


def pair_hash(adapter: str, worker_id: str) -> int:
    return xxhash.xxh64_intdigest(struct.pack("<QQ", key(adapter), key(worker_id)))


def score(adapter: str, worker_id: str, weight: float = 1.0) -> float:
    """Weighted HRW score of `worker_id` for `adapter`; higher wins."""
    u = (2 * (pair_hash(adapter, worker_id) >> 12) + 1) * _U_SCALE
    return float(-weight / ln(np.array([u]))[0])


def keys(names: Sequence[str]) -> np.ndarray:
    return np.fromiter((key(n) for n in names), dtype=np.uint64, count=len(names))


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _round(lane: int) -> int:
    return (_rotl((lane * _P2) & _M64, 31) * _P1) & _M64


def adapter_states(adapter_keys: np.ndarray) -> np.ndarray:
    """XXH64 state after the first 8-byte lane (the adapter key): one per adapter."""
    states = np.empty(len(adapter_keys), dtype=np.uint64)
    h0 = (_P5 + 16) & _M64
    for i, k in enumerate(adapter_keys.tolist()):
        h = h0 ^ _round(k)
        states[i] = (_rotl(h, 27) * _P1 + _P4) & _M64
    return states


def worker_lanes(worker_keys: np.ndarray) -> np.ndarray:
    """XXH64's round applied to each worker key: the second lane, one per worker."""
    return np.fromiter((_round(k) for k in worker_keys.tolist()), dtype=np.uint64,
                       count=len(worker_keys))


def rotate(x: np.ndarray) -> np.ndarray:
    """x rotated left by 27 bits, the rotation XXH64 applies to (state ^ lane): it distributes
    over XOR, rotl(s ^ l) == rotl(s) ^ rotl(l), so `mix` takes both sides already rotated and
    never rotates the adapters x workers matrix."""
    return (x << np.uint64(27)) | (x >> np.uint64(37))


def mix(rotated_states: np.ndarray, rotated_lanes: np.ndarray, out: np.ndarray,
        scratch: np.ndarray) -> np.ndarray:
    """pair_hashes(states, lanes) short of its last step, into `out`, from the rotated inputs.

    In place, with `scratch` (same shape) for the shifts: a temporary per step would cost
    more than the arithmetic. The last step, `finish`, leaves the top 32 bits as they are,
    so `h >= t` for a `t` whose low 32 bits are zero has the same answer before and after
    it: a screen by threshold finishes only the pairs it keeps.
    """
    np.bitwise_xor(rotated_states[:, None], rotated_lanes[None, :], out=out)
    out *= np.uint64(_P1)  # array arithmetic wraps modulo 2**64 without a warning
    out += np.uint64(_P4)
    for shift, prime in ((33, _P2), (29, _P3)):
        np.right_shift(out, np.uint64(shift), out=scratch)
        out ^= scratch
        out *= np.uint64(prime)
    return out


def finish(mixed: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """XXH64's last step, in place: turns `mix`'s output into the pair hashes."""
    mixed ^= np.right_shift(mixed, np.uint64(32), out=scratch)
    return mixed


def pair_hashes(states: np.ndarray, lanes: np.ndarray) -> np.ndarray:
    """XXH64 of every (adapter, worker) pair: shape (len(states), len(lanes))."""
    h = np.empty((len(states), len(lanes)), dtype=np.uint64)
    scratch = np.empty_like(h)
    return finish(mix(rotate(states), rotate(lanes), h, scratch), scratch)


def scores_from_hashes(hashes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    u = ((hashes >> np.uint64(12)) * np.uint64(2) + np.uint64(1)).astype(np.float64)
    u *= _U_SCALE
    scores: np.ndarray = -weights / ln(u)
    return scores


def screen_scores(hashes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Scores with the platform's SIMD log: within a few ulps of `scores_from_hashes`, for
    choosing which candidates to score exactly; never stored or compared across replicas."""
    u = ((hashes >> np.uint64(12)) * np.uint64(2) + np.uint64(1)).astype(np.float64)
    u *= _U_SCALE
    return -weights / np.log(u)


def pair_scores(states: np.ndarray, lanes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return scores_from_hashes(pair_hashes(states, lanes), weights)


def order(scores: np.ndarray, id_order: np.ndarray) -> np.ndarray:
    """Indices by score descending, ties by worker id (id_order = each worker's rank by id)."""
    return np.lexsort((id_order, -scores))


def rank_workers(adapter: str, workers: Sequence[Worker]) -> list[Worker]:
    """All `workers` best first for `adapter`; the cold-start path loads on element 0."""
    if not workers:
        return []
    ids = [w.id for w in workers]
    weights = np.fromiter((w.weight for w in workers), dtype=np.float64, count=len(workers))
    row = pair_scores(adapter_states(keys([adapter])), worker_lanes(keys(ids)), weights)[0]
    id_order = np.argsort(np.argsort(np.array(ids, dtype=object), kind="stable"), kind="stable")
    return [workers[i] for i in order(row, id_order).tolist()]


def pick_weighted(key_: str, choices: Mapping[str, float]) -> str:
    """HRW pick among weighted variants (A/B aliases sticky per user); ties by variant name.

    A variant's chance is its weight's share, and changing one weight moves only
    the users that must move.
    """
    if not choices:
        raise ValueError("pick_weighted needs at least one choice")
    return max(sorted(choices), key=lambda name: score(key_, name, choices[name]))
