"""Seeded request streams for the simulator: who asks for which adapter, when, and how much.

Every generator takes a `numpy.random.Generator` and yields `Requests` blocks
(parallel arrays, time-sorted), so the simulator never touches one Python
object per request while generating. Adapters are integers `0 .. n-1`, rank 0
hottest; the simulator names them `a{i}` like `allocator.synthetic`.

Non-homogeneous arrivals (diurnal, MMPP, flash crowd) are drawn by thinning a
Poisson process at the peak rate, which keeps them exact and vectorised.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import numpy as np

BLOCK = 8192


class Requests(msgspec.Struct, frozen=True):
    """A block of requests as parallel arrays, sorted by `time` (seconds)."""

    time: np.ndarray
    adapter: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray

    def __len__(self) -> int:
        return int(self.time.shape[0])


class Lengths(msgspec.Struct, frozen=True, kw_only=True):
    """Log-normal prompt and output lengths (medians and spread), clipped to [1, max]."""

    prompt_median: float = 256.0
    output_median: float = 48.0
    sigma: float = 0.6
    max_tokens: int = 2048

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        prompt = rng.lognormal(np.log(self.prompt_median), self.sigma, n)
        output = rng.lognormal(np.log(self.output_median), self.sigma, n)
        clip = (1, self.max_tokens)
        return (np.clip(prompt, *clip).astype(np.int32), np.clip(output, *clip).astype(np.int32))


class TraceError(ValueError):
    """A trace file that cannot be replayed: the message names the file, line and field."""


def zipf_weights(n: int, s: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** s
    return w / w.sum()


RateFn = Callable[[np.ndarray], np.ndarray]
"""Arrival rate (req/s) at each of the given times."""
PickFn = Callable[[np.random.Generator, np.ndarray], np.ndarray]
"""Adapter for a request arriving at each of the given times."""


def _zipf_picker(weights: np.ndarray) -> PickFn:
    cdf = np.cumsum(weights)

    def pick(rng: np.random.Generator, times: np.ndarray) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(times.shape[0])), cdf.shape[0] - 1).astype(np.int32)

    return pick


def thinned(rng: np.random.Generator, count: int, peak_rps: float, rate: RateFn, pick: PickFn,
            lengths: Lengths) -> Iterator[Requests]:
    """`count` requests from a Poisson process of intensity `rate(t) <= peak_rps`, in blocks."""
    now, left = 0.0, count
    while left > 0:
        gaps = rng.exponential(1.0 / peak_rps, BLOCK)
        times = now + np.cumsum(gaps)
        now = float(times[-1])
        keep = rng.random(BLOCK) * peak_rps < rate(times)
        times = times[keep][:left]
        if times.shape[0] == 0:
            continue
        left -= times.shape[0]
        prompt, output = lengths.draw(rng, times.shape[0])
        yield Requests(times, pick(rng, times), prompt, output)


def zipf(rng: np.random.Generator, count: int, n_adapters: int, s: float, rps: float,
         lengths: Lengths) -> Iterator[Requests]:
    """Stationary Poisson arrivals, Zipf(s) popularity."""
    return thinned(rng, count, rps, lambda t: np.full(t.shape, rps), _zipf_picker(zipf_weights(n_adapters, s)),
                   lengths)


def diurnal(rng: np.random.Generator, count: int, n_adapters: int, s: float, rps: float, period_s: float,
            swing: float, lengths: Lengths) -> Iterator[Requests]:
    """Mean rate `rps` swinging +-`swing` x rps over a sine of `period_s` (a compressed day)."""
    def rate(t: np.ndarray) -> np.ndarray:
        return rps * (1.0 + swing * np.sin(2 * np.pi * t / period_s - np.pi / 2))

    return thinned(rng, count, rps * (1 + swing), rate, _zipf_picker(zipf_weights(n_adapters, s)), lengths)


def flash_crowd(rng: np.random.Generator, count: int, n_adapters: int, s: float, rps: float, start_s: float,
                duration_s: float, crowd_rps: float, lengths: Lengths) -> Iterator[Requests]:
    """Zipf background plus, from `start_s` for `duration_s`, `crowd_rps` more on the COLDEST adapter."""
    base = _zipf_picker(zipf_weights(n_adapters, s))
    cold = n_adapters - 1

    def in_crowd(t: np.ndarray) -> np.ndarray:
        return (t >= start_s) & (t < start_s + duration_s)

    def rate(t: np.ndarray) -> np.ndarray:
        return rps + np.where(in_crowd(t), crowd_rps, 0.0)

    def pick(g: np.random.Generator, t: np.ndarray) -> np.ndarray:
        to_cold = in_crowd(t) & (g.random(t.shape[0]) * (rps + crowd_rps) < crowd_rps)
        return np.where(to_cold, cold, base(g, t)).astype(np.int32)

    return thinned(rng, count, rps + crowd_rps, rate, pick, lengths)


def popularity_shift(rng: np.random.Generator, count: int, n_adapters: int, s: float, rps: float,
                     period_s: float, shift: int, lengths: Lengths) -> Iterator[Requests]:
    """Zipf(s) whose ranking rotates by `shift` adapters every `period_s`: the hot set moves."""
    base = _zipf_picker(zipf_weights(n_adapters, s))

    def pick(g: np.random.Generator, t: np.ndarray) -> np.ndarray:
        epoch = (t // period_s).astype(np.int64)
        return ((base(g, t) + epoch * shift) % n_adapters).astype(np.int32)

    return thinned(rng, count, rps, lambda t: np.full(t.shape, rps), pick, lengths)


def mmpp(rng: np.random.Generator, count: int, n_adapters: int, s: float, low_rps: float, high_rps: float,
         mean_low_s: float, mean_high_s: float, lengths: Lengths) -> Iterator[Requests]:
    """Two-state Markov-modulated Poisson bursts: exponential sojourns at `low_rps` and `high_rps`."""
    horizon = 4.0 * count / max(low_rps, 1e-9) + 1.0
    edges, t, high = [0.0], 0.0, False
    while t < horizon:
        t += rng.exponential(mean_high_s if high else mean_low_s)
        edges.append(t)
        high = not high
    bounds = np.asarray(edges)

    def rate(times: np.ndarray) -> np.ndarray:
        state = (np.searchsorted(bounds, times, side="right") - 1) % 2
        return np.where(state == 1, high_rps, low_rps)

    return thinned(rng, count, high_rps, rate, _zipf_picker(zipf_weights(n_adapters, s)), lengths)


def concat(blocks: Iterator[Requests]) -> Requests:
    parts = list(blocks)
    if not parts:
        empty = np.zeros(0)
        return Requests(empty, empty.astype(np.int32), empty.astype(np.int32), empty.astype(np.int32))
    return Requests(*(np.concatenate([getattr(b, f) for b in parts]) for f in Requests.__struct_fields__))


def read_trace(path: Path) -> tuple[Requests, list[str]]:
    """A trace file (CSV with a header, or JSONL) of time, adapter, prompt_tokens, output_tokens.

    Times are seconds, shifted so the first request is at 0 and sorted;
    adapters are names, returned as indices into the list (hottest first).
    """
    rows = list(_jsonl_rows(path) if path.suffix in (".jsonl", ".ndjson") else _csv_rows(path))
    if not rows:
        raise TraceError(f"{path}: no requests")
    rows.sort(key=lambda r: r[0])
    counts: dict[str, int] = {}
    for r in rows:
        counts[r[1]] = counts.get(r[1], 0) + 1
    names = sorted(counts, key=lambda a: (-counts[a], a))
    index = {a: i for i, a in enumerate(names)}
    t0 = rows[0][0]
    return Requests(np.array([r[0] - t0 for r in rows], dtype=np.float64),
                    np.array([index[r[1]] for r in rows], dtype=np.int32),
                    np.array([r[2] for r in rows], dtype=np.int32),
                    np.array([r[3] for r in rows], dtype=np.int32)), names


_FIELDS = ("time", "adapter", "prompt_tokens", "output_tokens")


def _row(path: Path, line: int, record: dict[str, object]) -> tuple[float, str, int, int]:
    try:
        missing = [f for f in _FIELDS if f not in record]
        if missing:
            raise TraceError(f"{path}:{line}: missing field {missing[0]!r}")
        row = (float(record["time"]), str(record["adapter"]),  # type: ignore[arg-type]
               int(record["prompt_tokens"]), int(record["output_tokens"]))  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        if isinstance(exc, TraceError):
            raise
        raise TraceError(f"{path}:{line}: {exc}") from None
    if row[2] < 0 or row[3] < 1 or not np.isfinite(row[0]):
        raise TraceError(f"{path}:{line}: need time finite, prompt_tokens >= 0, output_tokens >= 1")
    return row


def _csv_rows(path: Path) -> Iterator[tuple[float, str, int, int]]:
    with path.open(newline="") as f:
        for i, record in enumerate(csv.DictReader(f), start=2):
            yield _row(path, i, record)


def _jsonl_rows(path: Path) -> Iterator[tuple[float, str, int, int]]:
    with path.open() as f:
        for i, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{path}:{i}: not JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise TraceError(f"{path}:{i}: expected an object")
            yield _row(path, i, record)
