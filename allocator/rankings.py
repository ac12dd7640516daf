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

from collections.abc import Mapping, Sequence

import numpy as np

from allocator import hrw
from allocator.model import Adapter, Worker

CHUNK = 256
"""Adapters scored per numpy block: keeps the temporaries to a few MB."""


def _identity(w: Worker) -> tuple[str, str, float, int]:
    return (w.id, w.base_model, w.weight, w.max_lora_rank)


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
        self._states: dict[str, int] = {}
        self._rows: dict[str, _Row] = {}
        self._full: dict[str, list[int]] = {}

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
        if added:
            self._full = {}
        elif dropped:
            self._full = {n: [i for i in r if i not in dropped] for n, r in self._full.items()}
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
            self._adapter_list = list(adapters)
            wanted = {a.name: a for a in adapters}
            for name in [n for n, a in self._adapters.items() if wanted.get(n) != a]:
                del self._adapters[name], self._states[name], self._rows[name]
                self._full.pop(name, None)
            fresh = [a for a in adapters if a.name not in self._adapters]
            states = hrw.adapter_states(hrw.keys([a.name for a in fresh])).tolist()
            for a, state in zip(fresh, states):
                self._adapters[a.name] = a
                self._states[a.name] = state
        stale = [a for n, a in self._adapters.items() if n not in self._rows]
        if dropped:
            for name, row in self._rows.items():
                if not dropped.isdisjoint(row.idx):
                    keep = [j for j, i in enumerate(row.idx) if i not in dropped]
                    row.idx = [row.idx[j] for j in keep]
                    row.scores = [row.scores[j] for j in keep]
                    if not row.complete and len(row.idx) < self.depth // 2:
                        stale.append(self._adapters[name])
        if added:
            self._insert(added)
        self._compute(stale)

    def _insert(self, added: list[int]) -> None:
        """Place each new worker into the rows it beats (or that list every candidate)."""
        by_class: dict[tuple[str, int], list[str]] = {}
        for name in self._rows:
            a = self._adapters[name]
            by_class.setdefault((a.base_model, a.rank), []).append(name)
        for names in by_class.values():
            cls = self._class(self._adapters[names[0]])
            new = [i for i in added if i in cls.members]
            if not new:
                continue
            states = np.array([self._states[n] for n in names], dtype=np.uint64)
            scores = hrw.pair_scores(states, self._lanes[new], self._weights[new])
            rows = [self._rows[n] for n in names]
            floor = np.array([-np.inf if r.complete or not r.idx else r.scores[-1] for r in rows])
            for r, c in zip(*np.nonzero(scores >= floor[:, None])):
                self._insert_one(rows[r], new[c], float(scores[r, c]))

    def _insert_one(self, row: _Row, i: int, s: float) -> None:
        key = (-s, self.ids[i])
        n = len(row.idx)
        if not row.complete and n and key > (-row.scores[-1], self.ids[row.idx[-1]]):
            return
        pos = n
        while pos and key < (-row.scores[pos - 1], self.ids[row.idx[pos - 1]]):
            pos -= 1
        row.idx.insert(pos, i)
        row.scores.insert(pos, s)
        if len(row.idx) > self.depth:
            row.complete = False
            del row.idx[self.depth:], row.scores[self.depth:]

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
                scores = hrw.pair_scores(states, cls.lanes, cls.weights)
                k = min(self.depth, n)
                part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else \
                    np.broadcast_to(np.arange(n), (len(block), n))
                for r, a in enumerate(block):
                    cols = part[r]
                    row_scores = scores[r, cols]
                    cols = cols[hrw.order(row_scores, cls.id_order[cols])]
                    self._rows[a.name] = _Row(cls.idx[cols].tolist(), scores[r, cols].tolist(), k == n)

    @property
    def rows(self) -> Mapping[str, _Row]:
        """Adapter -> its row: `idx` an exact prefix of its ranking (worker indices, best first),
        `complete` True when the prefix is the whole ranking. Read only."""
        return self._rows

    def full(self, adapter: str) -> list[int]:
        """The adapter's whole ranking, for the few walks past the prefix; kept until a worker joins."""
        ranking = self._full.get(adapter)
        if ranking is None:
            a = self._adapters[adapter]
            cls = self._class(a)
            state = np.array([self._states[adapter]], dtype=np.uint64)
            scores = hrw.pair_scores(state, cls.lanes, cls.weights)[0]
            ranking = self._full[adapter] = cls.idx[hrw.order(scores, cls.id_order)].tolist()
        return ranking
