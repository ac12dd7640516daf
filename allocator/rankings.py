"""Each adapter's HRW ranking of its candidate workers, kept as a short exact prefix.

Why a prefix: placement almost always stops within an adapter's first few
workers, so only the top `depth` are kept; a walk that needs more asks for the
full ranking. Why incremental: when one worker joins, only the adapters that
rank it above their current last entry change (about depth/n of them), and
when one leaves, removing it from the rows that list it leaves an exact, one
shorter prefix. So a membership change costs a few thousand hashes instead of
adapters x workers. Every answer equals a from-scratch computation: worker
indices are internal, decisions compare (score, worker id) only.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Mapping, Sequence

import numpy as np

from allocator import hrw
from allocator.model import Adapter, Worker

CHUNK = 256
"""Adapters scored per numpy block: keeps the temporaries to a few MB."""
SCREEN_MARGIN = 8


def _identity(w: Worker | None) -> tuple[str, str, float, int] | None:
    """What, changed, makes a worker new to the rankings; None for a freed index (matches no worker)."""
    return None if w is None else (w.id, w.base_model, w.weight, w.max_lora_rank)


class _Class:
    """The candidate workers shared by adapters of one base model and LoRA rank."""

    __slots__ = ("id_order", "idx", "lanes", "members", "weights")

    def __init__(self, idx: list[int], lanes: np.ndarray, weights: np.ndarray, ids: list[str]) -> None:
        self.idx = np.array(idx, dtype=np.int64)
        self.members = frozenset(idx)
        self.lanes = lanes[self.idx] if idx else np.empty(0, dtype=np.uint64)
        self.weights = weights[self.idx] if idx else np.empty(0, dtype=np.float64)
        by_id = sorted(range(len(idx)), key=lambda i: ids[idx[i]])
        self.id_order = np.empty(len(idx), dtype=np.int64)
        self.id_order[by_id] = np.arange(len(idx))


class _Row:
    __slots__ = ("complete", "idx", "scores")

    def __init__(self, idx: list[int], scores: list[float], complete: bool) -> None:
        self.idx = idx
        self.scores = scores
        self.complete = complete


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
        self._grouped: dict[tuple[str, int], list[str]] | None = None
        self._states: dict[str, int] = {}
        self._rows: dict[str, _Row] = {}
        self._full: dict[str, _Row] = {}

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
        dropped = {i for wid, i in self._idx.items()
                   if wid not in new or _identity(new[wid]) != _identity(self.workers[i])}
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
        stale = [a for n, a in self._adapters.items() if n not in self._rows]
        if dropped:
            for row in self._full.values():
                _remove(row, dropped)
            for name, row in self._rows.items():
                if not dropped.isdisjoint(row.idx):
                    _remove(row, dropped)
                    if not row.complete and len(row.idx) < self.depth // 2:
                        stale.append(self._adapters[name])
        if added:
            self._insert(added)
        self._compute(stale)

    def _insert(self, added: list[int]) -> None:
        """Place each new worker into the rows it beats (or that list every candidate)."""
        for grouped in self._names_by_class().values():
            names = [n for n in grouped if n in self._rows]  # fresh adapters get whole rows later
            if not names:
                continue
            cls = self._class(self._adapters[names[0]])
            new = [i for i in added if i in cls.members]
            if not new:
                continue
            states = np.array([self._states[n] for n in names], dtype=np.uint64)
            scores = hrw.pair_scores(states, self._lanes[new], self._weights[new])
            rows = [self._rows[n] for n in names]
            floor = np.array([-np.inf if r.complete or not r.idx else r.scores[-1] for r in rows])
            for r, c in zip(*np.nonzero(scores >= floor[:, None]), strict=True):
                self._insert_one(rows[r], new[c], float(scores[r, c]), self.depth)
            for r, name in enumerate(names):
                if name in self._full:
                    for c, i in enumerate(new):
                        self._insert_one(self._full[name], i, float(scores[r, c]), None)

    def _names_by_class(self) -> dict[tuple[str, int], list[str]]:
        """Adapters grouped by candidate class; rebuilt only when the catalog changed."""
        if self._grouped is None:
            self._grouped = {}
            for name, a in self._adapters.items():
                self._grouped.setdefault((a.base_model, a.rank), []).append(name)
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
        if limit is not None and len(row.idx) > limit:
            row.complete = False
            del row.idx[limit:], row.scores[limit:]

    def _compute(self, adapters: list[Adapter]) -> None:
        by_class: dict[tuple[str, int], list[Adapter]] = {}
        for a in adapters:
            by_class.setdefault((a.base_model, a.rank), []).append(a)
        for group in by_class.values():
            cls = self._class(group[0])
            n = len(cls.idx)
            for start in range(0, len(group), CHUNK):
                block = group[start:start + CHUNK]
                if n == 0:
                    for a in block:
                        self._rows[a.name] = _Row([], [], True)
                    continue
                states = np.array([self._states[a.name] for a in block], dtype=np.uint64)
                self._compute_block(block, hrw.pair_hashes(states, cls.lanes), cls)

    def _compute_block(self, block: list[Adapter], hashes: np.ndarray, cls: _Class) -> None:
        """Screen with the platform's fast log, then rank the survivors by exact scores.

        The exact top `depth` lies inside the screened top `depth + SCREEN_MARGIN`
        unless more than SCREEN_MARGIN scores sit within a few ulps of the
        boundary, which does not happen; the kept rows hold exact scores only.
        """
        n = len(cls.idx)
        k = min(self.depth + SCREEN_MARGIN, n)
        if k < n:
            screened = hrw.screen_scores(hashes, cls.weights)
            cols = np.argpartition(-screened, k - 1, axis=1)[:, :k]
        else:
            cols = np.broadcast_to(np.arange(n), (len(block), n))
        exact = hrw.scores_from_hashes(np.take_along_axis(hashes, cols, axis=1), cls.weights[cols])
        keep = min(self.depth, n)
        for r, a in enumerate(block):
            ranked = hrw.order(exact[r], cls.id_order[cols[r]])[:keep]
            self._rows[a.name] = _Row(cls.idx[cols[r][ranked]].tolist(), exact[r][ranked].tolist(), keep == n)

    @property
    def rows(self) -> Mapping[str, _Row]:
        """Adapter -> its row: `idx` an exact prefix of its ranking (worker indices, best first),
        `complete` True when the prefix is the whole ranking. Read only."""
        return self._rows

    def full(self, adapter: str) -> list[int]:
        """The adapter's whole ranking, for the few walks past the prefix; updated as workers come and go."""
        row = self._full.get(adapter)
        if row is None:
            cls = self._class(self._adapters[adapter])
            state = np.array([self._states[adapter]], dtype=np.uint64)
            scores = hrw.pair_scores(state, cls.lanes, cls.weights)[0]
            ranked = hrw.order(scores, cls.id_order)
            row = self._full[adapter] = _Row(cls.idx[ranked].tolist(), scores[ranked].tolist(), True)
        return row.idx


def _remove(row: _Row, dropped: set[int]) -> None:
    for i in dropped:
        try:
            pos = row.idx.index(i)
        except ValueError:
            continue
        del row.idx[pos], row.scores[pos]
