"""Each adapter's HRW ranking of its candidate workers, kept as a short exact prefix.

Why a prefix: placement almost always stops within an adapter's first few
workers, so only the top `depth` are kept; a walk that needs more asks for the
full ranking. Why incremental: when one worker joins, only the adapters that
rank it above their current last entry change (about depth/n of them), and
when one leaves, removing it from the rows that list it leaves an exact, one
shorter prefix. So a membership change costs a few thousand hashes instead of
adapters x workers. Every answer equals a from-scratch computation: worker
indices are internal, decisions compare (score, worker id) only.

The rows are also kept as arrays (`table`), copied row by row as rows change,
for a caller that works on all adapters at once: reading 100,000 lists each
re-plan cost more than the re-plan's own work.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
from collections.abc import Mapping, Sequence

import numpy as np

from allocator import hrw
from allocator.model import Adapter, Worker

CHUNK = 1 << 18
"""(Adapter, candidate) pairs hashed per numpy block: the block and its scratch stay in cache."""
BATCH = 256
"""Adapters whose screened candidates are ranked together: spreads numpy's cost per call."""
SCREEN_MARGIN = 8
SCREEN_SIGMAS = 4.0
"""The hash screen's threshold lets a row expect k + SCREEN_SIGMAS * sqrt(k) survivors, k =
depth + SCREEN_MARGIN: about 3 rows in 10,000 then fall short of k and need a threshold of their own."""
_HIGH_32 = ((1 << 32) - 1) << 32
UNIFORM_WEIGHTS = (2.0**-960, 2.0**960)
"""Equal weights in this range screen by hash: their scores are normal floats, never inf or
flushed to zero, so they follow the hashes."""


def _identity(w: Worker | None) -> tuple[str, str, float, int] | None:
    """What, changed, makes a worker new to the rankings; None for a freed index (matches no worker)."""
    return None if w is None else (w.id, w.base_model, w.weight, w.max_lora_rank)


class _Class:
    """The candidate workers shared by adapters of one base model and LoRA rank."""

    __slots__ = ("id_order", "idx", "lanes", "members", "uniform", "weights")

    def __init__(self, idx: list[int], lanes: np.ndarray, weights: np.ndarray, ids: list[str]) -> None:
        self.idx = np.array(idx, dtype=np.int64)
        self.members = frozenset(idx)
        self.lanes = lanes[self.idx] if idx else np.empty(0, dtype=np.uint64)
        self.weights = weights[self.idx] if idx else np.empty(0, dtype=np.float64)
        low, high = UNIFORM_WEIGHTS
        self.uniform = bool(idx) and low < self.weights[0] < high and bool(np.all(self.weights == self.weights[0]))
        by_id = sorted(range(len(idx)), key=[ids[i] for i in idx].__getitem__)
        self.id_order = np.empty(len(idx), dtype=np.int64)
        self.id_order[by_id] = np.arange(len(idx))


class _Row:
    __slots__ = ("complete", "idx", "scores", "where")

    def __init__(self, idx: list[int], scores: list[float], complete: bool) -> None:
        self.idx = idx
        self.scores = scores
        self.complete = complete
        self.where: np.ndarray | None = None
        """Full rankings only: worker index -> rank (-1: not in it), so a rank is one lookup
        and not a scan of thousands of entries."""

    def index_workers(self, size: int) -> None:
        self.where = np.full(size, -1, dtype=np.int64)
        self.where[self.idx] = np.arange(len(self.idx))


class PrefixTable:
    """Every adapter's row as arrays, aligned with the adapters of the last `sync`: what a caller
    vectorising over all adapters reads instead of 100,000 lists.

    `idx[j, :length[j]]` is row j's prefix (worker indices, best first), -1 beyond; `floor[j]`
    the score a new worker must reach to enter row j (-inf when the row lists every candidate
    or none).
    """

    __slots__ = ("complete", "floor", "idx", "length")

    def __init__(self, n: int, depth: int) -> None:
        self.idx = np.full((n, depth), -1, dtype=np.int64)
        self.length = np.zeros(n, dtype=np.int64)
        self.complete = np.zeros(n, dtype=bool)
        self.floor = np.full(n, -np.inf)

    @classmethod
    def build(cls, rows: Sequence[_Row | None], depth: int) -> PrefixTable:
        table = cls(len(rows), depth)
        present = [r for r in rows if r is not None]
        has = np.fromiter((r is not None for r in rows), dtype=bool, count=len(rows))
        lengths = np.fromiter((len(r.idx) for r in present), dtype=np.int64, count=len(present))
        table.length[has] = lengths
        table.complete[has] = np.fromiter((r.complete for r in present), dtype=bool, count=len(present))
        table.floor[has] = np.fromiter((-np.inf if r.complete or not r.idx else r.scores[-1] for r in present),
                                       dtype=np.float64, count=len(present))
        flat = np.fromiter(itertools.chain.from_iterable(r.idx for r in present), dtype=np.int64,
                           count=int(lengths.sum()))
        table.idx[np.arange(depth) < table.length[:, None]] = flat
        return table

    def take(self, rows: np.ndarray) -> PrefixTable:
        """The table of `rows` (-1: an empty row)."""
        out = PrefixTable(len(rows), self.idx.shape[1])
        found = rows >= 0
        out.idx[found], out.length[found] = self.idx[rows[found]], self.length[rows[found]]
        out.complete[found], out.floor[found] = self.complete[rows[found]], self.floor[rows[found]]
        return out

    def write(self, j: int, row: _Row | None) -> None:
        n = len(row.idx) if row is not None else 0
        if row is not None:
            self.idx[j, :n] = row.idx
        self.idx[j, n:] = -1
        self.length[j] = n
        self.complete[j] = row is not None and row.complete
        self.floor[j] = -np.inf if row is None or row.complete or not n else row.scores[-1]


class _Group:
    """The adapters of one candidate class: names, HRW states and table rows, per catalog."""

    __slots__ = ("at", "names", "states")

    def __init__(self, names: list[str], states: np.ndarray, at: np.ndarray) -> None:
        self.names = names
        self.states = states
        self.at = at


class Rankings:
    """Top-`depth` candidates per adapter over a stable worker index space."""

    def __init__(self, depth: int = 32) -> None:
        self.depth = depth
        self._reset()

    def _reset(self) -> None:
        self.workers: list[Worker | None] = []
        self.ids: list[str] = []
        self._idx: dict[str, int] = {}
        self._lanes = np.empty(0, dtype=np.uint64)
        self._weights = np.empty(0, dtype=np.float64)
        self._classes: dict[tuple[str, int], _Class] = {}
        self._adapters: dict[str, Adapter] = {}
        self._adapter_list: list[Adapter] = []
        self._grouped: dict[tuple[str, int], _Group] | None = None
        self._states: dict[str, int] = {}
        self._rows: dict[str, _Row] = {}
        self._full: dict[str, _Row] = {}
        self._order: dict[str, int] = {}
        """Adapter name -> its row in the table (the order of the last sync's adapters)."""
        self._table = PrefixTable(0, self.depth)
        self._dirty: set[str] = set()
        """Adapters whose row changed since the table last copied it."""

    @property
    def positions(self) -> Mapping[str, int]:
        """Current worker id -> internal index (read only)."""
        return self._idx

    def position(self, worker_id: str) -> int:
        return self._idx[worker_id]

    def candidates(self, adapter: str) -> int:
        """How many current workers could hold this adapter (base model and rank fit)."""
        return len(self._class(self._adapters[adapter]).idx)

    def sync(self, workers: Sequence[Worker], adapters: Sequence[Adapter]) -> None:
        """Bring the rows up to date with this membership and catalog."""
        new = {w.id: w for w in workers}
        known = self.workers
        dropped = {i for wid, i in self._idx.items()
                   if (w := new.get(wid)) is None or (w is not known[i] and _identity(w) != _identity(known[i]))}
        for i in dropped:
            del self._idx[self.ids[i]]
            self.workers[i] = None
        if len(self.workers) - len(self._idx) > max(64, len(new)):
            self._reset()  # mostly departed workers: start again (same answers, smaller arrays)
            dropped = set()
        added = sorted((w for w in new.values() if w.id not in self._idx), key=lambda w: w.id)
        for w in added:
            self._idx[w.id] = len(self.workers)
            self.workers.append(w)
            self.ids.append(w.id)
        for wid, i in self._idx.items():
            self.workers[i] = new[wid]
        if added:
            self._lanes = np.concatenate([self._lanes, hrw.worker_lanes(hrw.keys([w.id for w in added]))])
            self._weights = np.concatenate([self._weights, [w.weight for w in added]])
        if added or dropped:
            self._classes = {}
        self._sync_adapters(adapters, dropped, [self._idx[w.id] for w in added])

    def _class(self, a: Adapter) -> _Class:
        key = (a.base_model, a.rank)
        cls = self._classes.get(key)
        if cls is None:
            idx = [i for i, w in enumerate(self.workers)
                   if w is not None and w.base_model == a.base_model and w.max_lora_rank >= a.rank]
            cls = self._classes[key] = _Class(idx, self._lanes, self._weights, self.ids)
        return cls

    def _sync_adapters(self, adapters: Sequence[Adapter], dropped: set[int], added: list[int]) -> None:
        fresh: list[Adapter] = []
        if list(adapters) != self._adapter_list:
            self._adapter_list, self._grouped = list(adapters), None
            wanted = {a.name: a for a in adapters}
            for name in [n for n, a in self._adapters.items() if wanted.get(n) != a]:
                del self._adapters[name], self._states[name], self._rows[name]
                self._full.pop(name, None)
            fresh = [a for a in adapters if a.name not in self._adapters]
            states = hrw.adapter_states(hrw.keys([a.name for a in fresh])).tolist()
            for a, state in zip(fresh, states, strict=True):
                self._adapters[a.name] = a
                self._states[a.name] = state
            self._reorder(fresh)
        stale = list(fresh)  # the only adapters without a row
        if dropped:
            for row in self._full.values():
                _remove(row, dropped)
            for name in self._holding(dropped):
                row = self._rows[name]
                _remove(row, dropped)
                self._dirty.add(name)
                if not row.complete and len(row.idx) < self.depth // 2:
                    stale.append(self._adapters[name])
        if added and self._rows:  # (before the first rows exist, every adapter is fresh)
            self._insert(added, {a.name for a in fresh})
        self._compute(stale)

    def _reorder(self, fresh: list[Adapter]) -> None:
        """Align the table with a new catalog: rows it already holds move, fresh adapters' are marked."""
        names = [a.name for a in self._adapter_list]
        old = self._order
        self._order = {name: j for j, name in enumerate(names)}
        self._table = self._table.take(np.fromiter((old.get(name, -1) for name in names), dtype=np.int64,
                                                   count=len(names)))
        self._dirty.update(a.name for a in fresh)

    def table(self) -> PrefixTable:
        """The rows as arrays, aligned with the adapters of the last sync (read only)."""
        if len(self._dirty) > len(self._order) // 8:  # many changed rows: one bulk copy is faster
            self._table = PrefixTable.build([self._rows.get(a.name) for a in self._adapter_list], self.depth)
        else:
            order, rows, table = self._order, self._rows, self._table
            for name in self._dirty:
                j = order.get(name)
                if j is not None:
                    table.write(j, rows.get(name))
        self._dirty = set()
        return self._table

    def _holding(self, dropped: set[int]) -> list[str]:
        """The adapters whose row lists a dropped worker."""
        idx = self.table().idx
        if len(dropped) <= 4:  # one compare per entry and worker is faster than one lookup per entry
            first, *others = dropped
            hit = idx == first
            for i in others:
                hit |= idx == i
        else:
            gone = np.zeros(len(self.workers) + 1, dtype=bool)  # the last entry: what -1 (no worker) reads
            gone[list(dropped)] = True
            hit = gone[idx]
        rows = np.unique(np.flatnonzero(hit) // idx.shape[1]).tolist()
        names = self._adapter_list
        return [names[j].name for j in rows if names[j].name in self._rows]

    def _insert(self, added: list[int], fresh: set[str]) -> None:
        """Place each new worker into the rows it beats (or that list every candidate)."""
        table = self.table()
        for group in self._groups().values():
            cls = self._class(self._adapters[group.names[0]])
            new = [i for i in added if i in cls.members]
            if not new:
                continue
            names, states, at = group.names, group.states, group.at
            if fresh:  # fresh adapters get whole rows later
                keep = np.array([n not in fresh for n in names], dtype=bool)
                names, states, at = [n for n in names if n not in fresh], states[keep], at[keep]
            scores = hrw.pair_scores(states, self._lanes[new], self._weights[new])
            for r, c in zip(*np.nonzero(scores >= table.floor[at][:, None]), strict=True):
                self._insert_one(self._rows[names[r]], new[c], float(scores[r, c]), self.depth)
                self._dirty.add(names[r])
        by_class: dict[tuple[str, int], list[str]] = {}
        for name in self._full:
            a = self._adapters[name]
            by_class.setdefault((a.base_model, a.rank), []).append(name)
        for names in by_class.values():
            cls = self._class(self._adapters[names[0]])
            new = [i for i in added if i in cls.members]
            if new:
                states = np.array([self._states[n] for n in names], dtype=np.uint64)
                scores = hrw.pair_scores(states, self._lanes[new], self._weights[new]).tolist()
                for name, row_scores in zip(names, scores, strict=True):
                    for i, s in zip(new, row_scores, strict=True):
                        self._insert_one(self._full[name], i, s, None)

    def _groups(self) -> dict[tuple[str, int], _Group]:
        """Adapters grouped by candidate class; rebuilt only when the catalog changed."""
        if self._grouped is None:
            names: dict[tuple[str, int], list[str]] = {}
            for name, a in self._adapters.items():
                names.setdefault((a.base_model, a.rank), []).append(name)
            self._grouped = {
                key: _Group(group, np.array([self._states[n] for n in group], dtype=np.uint64),
                            np.array([self._order[n] for n in group], dtype=np.int64))
                for key, group in names.items()}
        return self._grouped

    def _insert_one(self, row: _Row, i: int, s: float, limit: int | None) -> None:
        """Insert worker i (score s) where it ranks, if the row reaches that far; keep `limit` entries."""
        ids, wid = self.ids, self.ids[i]
        if not row.complete and row.idx and (-s, wid) > (-row.scores[-1], ids[row.idx[-1]]):
            return
        pos = bisect.bisect_left(row.scores, -s, key=operator.neg)
        while pos < len(row.idx) and row.scores[pos] == s and ids[row.idx[pos]] < wid:
            pos += 1
        row.idx.insert(pos, i)
        row.scores.insert(pos, s)
        if row.where is not None:
            if i >= len(row.where):  # room for this worker and, doubling, for many more to come
                row.where = np.concatenate([row.where, np.full(max(i + 1, 2 * len(row.where)) - len(row.where), -1,
                                                               dtype=np.int64)])
            row.where += row.where >= pos  # one pass; a masked update would be two
            row.where[i] = pos
        if limit is not None and len(row.idx) > limit:
            row.complete = False
            del row.idx[limit:], row.scores[limit:]

    def _compute(self, adapters: list[Adapter]) -> None:
        by_class: dict[tuple[str, int], list[Adapter]] = {}
        for a in adapters:
            by_class.setdefault((a.base_model, a.rank), []).append(a)
            self._dirty.add(a.name)
        for group in by_class.values():
            cls = self._class(group[0])
            n = len(cls.idx)
            if n == 0:
                for a in group:
                    self._rows[a.name] = _Row([], [], True)
                continue
            states = hrw.rotate(np.array([self._states[a.name] for a in group], dtype=np.uint64))
            lanes = hrw.rotate(cls.lanes)
            step = max(1, min(BATCH, CHUNK // n))
            mixed = np.empty((step, n), dtype=np.uint64)
            scratch = np.empty_like(mixed)
            for start in range(0, len(group), BATCH):
                batch = group[start:start + BATCH]
                screened = []
                for at in range(0, len(batch), step):
                    m = min(step, len(batch) - at)
                    hrw.mix(states[start + at:start + at + m], lanes, mixed[:m], scratch[:m])
                    rows, cols, hashes = _screen(mixed[:m], scratch[:m], cls, self.depth)
                    screened.append((rows + at, cols, hashes))
                rows, cols, hashes = (np.concatenate(part) for part in zip(*screened, strict=True))
                cols, scores = _rank(rows, cols, hashes, cls, len(batch), self.depth)
                for a, i, sc in zip(batch, cls.idx[cols].tolist(), scores.tolist(), strict=True):
                    self._rows[a.name] = _Row(i, sc, n <= self.depth)

    @property
    def rows(self) -> Mapping[str, _Row]:
        """Adapter -> its row: `idx` an exact prefix of its ranking (worker indices, best first),
        `complete` True when the prefix is the whole ranking. Read only."""
        return self._rows

    def full(self, adapter: str) -> list[int]:
        """The adapter's whole ranking, for the few walks past the prefix; updated as workers come and go."""
        return self._full_row(adapter).idx

    def _full_row(self, adapter: str) -> _Row:
        row = self._full.get(adapter)
        if row is None:
            cls = self._class(self._adapters[adapter])
            state = np.array([self._states[adapter]], dtype=np.uint64)
            scores = hrw.pair_scores(state, cls.lanes, cls.weights)[0]
            ranked = hrw.order(scores, cls.id_order)
            row = self._full[adapter] = _Row(cls.idx[ranked].tolist(), scores[ranked].tolist(), True)
            row.index_workers(len(self.workers))
        return row

    def ranks(self, adapter: str, workers: Sequence[int]) -> list[int]:
        """Where each of these worker indices ranks for the adapter, whatever the prefix depth (-1:
        not a candidate). The full ranking is asked for only when one is past the prefix: each
        full ranking kept costs every later membership change an update."""
        row = self._rows[adapter]
        ws = np.asarray(workers, dtype=np.int64)
        match = ws[:, None] == np.asarray(row.idx, dtype=np.int64)[None, :]
        found = match.any(axis=1)
        ranks = np.where(found, match.argmax(axis=1), -1)
        if not row.complete and not found.all():
            where = self._full_row(adapter).where
            assert where is not None
            past = ws[~found]
            ranks[~found] = np.where(past < len(where), where[np.minimum(past, len(where) - 1)], -1)
        out: list[int] = ranks.tolist()
        return out


def _screen(mixed: np.ndarray, scratch: np.ndarray, cls: _Class, depth: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, hashes) of the candidates each row keeps for exact scoring: at least
    `depth + SCREEN_MARGIN`, or all. `mixed` is `hrw.mix`'s output (overwritten, with `scratch`).

    The exact top `depth` lies inside them unless more than SCREEN_MARGIN scores sit within
    a few ulps of the boundary, which does not happen.
    """
    k = min(depth + SCREEN_MARGIN, mixed.shape[1])
    if cls.uniform:
        rows, cols = _screen_by_hash(mixed, k)
        return rows, cols, hrw.finish(mixed[rows, cols])
    hashes = hrw.finish(mixed, scratch)
    rows, cols = _screen_by_score(hashes, cls.weights, k)
    return rows, cols, hashes[rows, cols]


def _rank(rows: np.ndarray, cols: np.ndarray, hashes: np.ndarray, cls: _Class, r: int, depth: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """Each of the r rows' exact top min(depth, n) among its screened candidates (`rows`
    ascending), by score then worker id, as (columns into `cls`, exact scores), best first."""
    keep = min(depth, len(cls.idx))
    exact = hrw.scores_from_hashes(hashes, cls.weights[cols])
    # One 2-D sort of the survivors, padded to a rectangle with +inf (a row with padding has
    # more than `keep` real entries), instead of a sort per row.
    counts = np.bincount(rows, minlength=r)
    starts = np.cumsum(counts) - counts
    neg = np.full((r, counts.max()), np.inf)
    neg[rows, np.arange(len(rows)) - starts[rows]] = -exact
    ranked = np.argsort(neg, axis=1)[:, :keep + 1]
    kept = starts[:, None] + ranked[:, :keep]
    top = np.take_along_axis(neg, ranked, axis=1)
    for i in np.flatnonzero(~np.all(top[:, 1:] > top[:, :-1], axis=1)):
        # Equal (or NaN) scores in the top: the worker id decides, as in `hrw.order`.
        own = slice(starts[i], starts[i] + counts[i])
        kept[i] = starts[i] + hrw.order(exact[own], cls.id_order[cols[own]])[:keep]
    return cols[kept], exact[kept]


def _screen_by_hash(mixed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of the pairs whose hash reaches a threshold: at least k per row.

    Why it holds the screen's guarantee: with equal weights, scores follow h >> 12 (to within
    the ulps SCREEN_MARGIN allows for), and a threshold's low 32 bits are zero, so a row
    keeps its top k or more by h >> 12, ties included. Why a threshold: hashes are uniform,
    so one compare per pair (on `mix`'s output, see there) replaces partitioning every row;
    the few rows it leaves short of k take their k-th hash, low bits cleared, as their own.
    """
    r, n = mixed.shape
    expected = k + SCREEN_SIGMAS * math.sqrt(k)
    if expected >= n:
        return np.repeat(np.arange(r), n), np.tile(np.arange(n), r)
    passed = mixed >= np.uint64(int(2.0**64 * (1.0 - expected / n)) & _HIGH_32)
    rows, cols = np.divmod(np.flatnonzero(passed), n)  # 2-D nonzero is many times slower
    short = np.flatnonzero(np.bincount(rows, minlength=r) < k)
    for i in short:
        passed[i] = mixed[i] >= np.partition(mixed[i], n - k)[n - k] & np.uint64(_HIGH_32)
    if len(short):
        rows, cols = np.divmod(np.flatnonzero(passed), n)
    return rows, cols


def _screen_by_score(hashes: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of each row's top k by `hrw.screen_scores` (the platform's fast log)."""
    r, n = hashes.shape
    if k < n:
        cols = np.argpartition(-hrw.screen_scores(hashes, weights), k - 1, axis=1)[:, :k].ravel()
    else:
        cols = np.tile(np.arange(n), r)
    return np.repeat(np.arange(r), k), cols


def _remove(row: _Row, dropped: set[int]) -> None:
    for i in dropped:
        if row.where is not None:
            pos = int(row.where[i]) if i < len(row.where) else -1
            if pos < 0:
                continue
            row.where -= row.where > pos
            row.where[i] = -1
        else:
            try:
                pos = row.idx.index(i)
            except ValueError:
                continue
        del row.idx[pos], row.scores[pos]
