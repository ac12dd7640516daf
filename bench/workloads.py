"""Seeded request streams for the simulator: who asks for which adapter, when, and how much.

Every generator takes a `numpy.random.Generator` and yields `Requests` blocks
(parallel arrays, time-sorted), so the simulator never touches one Python
object per request while generating. Adapters are integers `0 .. n-1`, rank 0
hottest; the simulator names them `a{i}` like `allocator.synthetic`.

Non-homogeneous arrivals (diurnal, MMPP, flash crowd) are drawn by thinning a
Poisson process at the peak rate, which keeps them exact and vectorised.

Chat sessions (`chat`) are the one workload whose prompts share prefixes: each
adapter has a system prompt, and every turn of a session repeats the session's
history before its new message. `prompt_blocks` names those shared parts as
KV-cache blocks, so the engine's prefix cache and the router's prefix index see
the same structure vLLM's hashing would.
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
    session: np.ndarray | None = None
    """Per request, its conversation (-1: none); None when no request has one. Every turn of a session
    starts with its previous turn's prompt (the history), so their blocks are shared."""
    system_tokens: np.ndarray | None = None
    """Per request, the length of its adapter's system prompt: the blocks it shares with every session of
    that adapter. None when no request has one."""

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


class Chat(msgspec.Struct, frozen=True, kw_only=True):
    """Multi-turn chat: per adapter one system prompt (log-normal length), sessions of `min_turns` or
    more turns whose user messages and answers accumulate as history, with think time between turns."""

    system_median: float = 1200.0
    """Tokens of an adapter's system prompt (median; each adapter draws its own length once)."""
    user_median: float = 80.0
    min_turns: int = 4
    extra_turns_mean: float = 2.0
    """Turns beyond `min_turns`: Poisson with this mean."""
    think_s: float = 8.0
    """Mean pause after an answer before the next turn (exponential)."""
    answer_s_per_token: float = 0.02
    """How long the client expects an answer to stream, per output token, before it starts thinking."""
    sigma: float = 0.4

    @property
    def mean_turns(self) -> float:
        return self.min_turns + self.extra_turns_mean


def chat(rng: np.random.Generator, count: int, n_adapters: int, s: float, rps: float, shape: Chat,
         lengths: Lengths) -> Requests:
    """`count` turns of chat sessions that start as a Poisson process (Zipf(s) adapter per session) at
    `rps / mean_turns` sessions a second, so the turns arrive at about `rps`; open loop, sorted by time."""
    system = np.clip(rng.lognormal(np.log(shape.system_median), shape.sigma, n_adapters), 64, 8192).astype(np.int64)
    n_sessions = int(np.ceil(count / shape.mean_turns * 1.3)) + 8
    starts = np.cumsum(rng.exponential(shape.mean_turns / rps, n_sessions))
    adapters = _zipf_picker(zipf_weights(n_adapters, s))(rng, starts)
    turns = shape.min_turns + rng.poisson(shape.extra_turns_mean, n_sessions)
    total = int(turns.sum())
    session = np.repeat(np.arange(n_sessions, dtype=np.int64), turns)
    first = np.repeat(np.cumsum(turns) - turns, turns)
    turn = np.arange(total) - first
    user = np.clip(rng.lognormal(np.log(shape.user_median), shape.sigma, total), 1, lengths.max_tokens).astype(np.int64)
    _, output = lengths.draw(rng, total)
    output = output.astype(np.int64)
    # turn k's prompt: system + every earlier turn's user message and answer + its own message
    said = user + output
    before = _exclusive_cumsum_within(said, first)
    adapter = np.repeat(adapters, turns)
    prompt = system[adapter] + before + user
    gap = np.where(turn == 0, 0.0, np.roll(output, 1) * shape.answer_s_per_token
                   + rng.exponential(shape.think_s, total))
    time = np.repeat(starts, turns) + _inclusive_cumsum_within(gap, first)
    order = np.argsort(time, kind="stable")[:count]
    return Requests(time[order], adapter[order].astype(np.int32), prompt[order].astype(np.int32),
                    output[order].astype(np.int32), session[order], system[adapter][order].astype(np.int32))


def _inclusive_cumsum_within(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Running sums that restart at every group (groups are runs; `first[i]` = index of i's group start)."""
    total = np.cumsum(values)
    return total - (total[first] - values[first])


def _exclusive_cumsum_within(values: np.ndarray, first: np.ndarray) -> np.ndarray:
    return _inclusive_cumsum_within(values, first) - values


SESSION_SHIFT = 24
"""Block ids: a block's position in the prompt takes the low bits (prompts up to 16M blocks), the
conversation or the adapter the rest; adapter ids are offset past every session id."""
SYSTEM_OFFSET = 1 << 40


def prompt_blocks(adapter: int, session: int, system_tokens: int, prompt_tokens: int,
                  block_tokens: int) -> tuple[int, ...]:
    """The full KV blocks of one request's prompt as vLLM's prefix cache would key them (by adapter and by
    everything before): those wholly inside the adapter's system prompt are shared by all its sessions,
    the rest belong to the conversation. A request outside any session shares nothing: ()."""
    if session < 0:
        return ()
    full = prompt_tokens // block_tokens
    shared = min(system_tokens // block_tokens, full)
    system = (SYSTEM_OFFSET + adapter) << SESSION_SHIFT
    own = session << SESSION_SHIFT
    return tuple(range(system, system + shared)) + tuple(range(own + shared, own + full))


def concat(blocks: Iterator[Requests]) -> Requests:
    parts = list(blocks)
    if not parts:
        empty = np.zeros(0)
        return Requests(empty, empty.astype(np.int32), empty.astype(np.int32), empty.astype(np.int32))
    fields = ("time", "adapter", "prompt_tokens", "output_tokens")
    return Requests(*(np.concatenate([getattr(b, f) for b in parts]) for f in fields))


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
