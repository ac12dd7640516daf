"""Offline clairvoyant lower bounds, per workload, on what routing cannot save: adapter reads and prefill.

Both count what one cache as large as the whole fleet would miss under Belady's
MIN, knowing every future request: no fleet schedule, which spreads the same
capacity over many workers and picks by what it knows now, can miss less.

Adapter reads (`EngineModel.host_loads`). A worker reads an adapter from disk
when it is in neither its host LRU (`host_slots`) nor its GPU slots
(`max_loras`) — the engine drops an adapter from the host LRU while it may stay
in a GPU slot, so a worker holds up to `host_slots + max_loras` adapters at
once, and the fleet, whatever copies it keeps, at most `workers x` that many
distinct ones. Replay the fleet's requests, in order, against one cache of
that size holding the union of the workers' adapters: a request served without
a read finds its adapter in the union, and the union changes only by reads and
evictions, so it is a caching policy for that sequence missing at most as often
as the fleet reads. Belady's MIN misses least of all such policies; the first
request of every adapter is a miss for all of them (compulsory).

Prefilled tokens. A worker's prefix cache holds at most `kv_blocks` blocks, the
fleet's union at most `workers x kv_blocks`; a request's cached tokens are a
run of its leading blocks found in the chosen worker's cache, a subset of the
union, so the blocks of the request missing from the union (m of them) are
never cached. The engine caches at most `prompt - 1` tokens (`_cached_tokens`)
and only full blocks, so a request of p tokens and f full blocks of B tokens
prefills at least u = p - min(B f, p - 1) tokens, plus B per missing block —
one less for a prompt of exactly f blocks, whose last token is computed
anyway. Summed: prefilled >= sum(u) + B M - min(M, E), with M the
misses of the union, at least Belady's over the blocks of every prompt in
request order, and E the prompts of exactly f >= 1 blocks (M grows the bound,
so Belady's M in its place keeps it a bound). Misses here allow bypass (a
block may be left out of the cache), which a union of LRUs can do too.

Order. The replay takes the requests in arrival order, the order in which an
engine admits them except for two reorderings: vLLM's scheduler (and the
engine model) lets a request pass one whose adapter waits for a GPU slot, and
two workers may admit in the opposite order of arrival. The bounds are strict
for every schedule that admits in arrival order. Their compulsory part (each
adapter's and each block's first request, the tokens no block can hold) holds
in any order; only what a full cache misses beyond it could shrink if requests
were reordered (tests/bench_sim/test_bound.py checks every strategy against
the bounds).

Speed. Blocks are chain identities (a block only ever follows the same
predecessor), so every request that has a block has all the blocks before it:
a run of blocks each referenced exactly as often as the one before has the very
same references, and MIN can hold any part of such a run as one item of many
units. A chat turn is then a handful of runs (its adapter's system prompt and
one per earlier turn), not a hundred blocks, and 40,000 turns take a second.
"""

from __future__ import annotations

import heapq
from itertools import chain, count

import msgspec
import numpy as np

from bench.perfmodel import PerfParams
from bench.workloads import Requests, prompt_blocks


class Bound(msgspec.Struct, frozen=True, kw_only=True):
    adapter_reads: int
    """Adapter reads from disk that no schedule avoids."""
    prefilled_tokens: int
    """Prompt tokens that no schedule finds in a prefix cache."""


def next_uses(refs: np.ndarray) -> np.ndarray:
    """For each position, the next position referencing the same item; `len(refs)` where there is none."""
    n = refs.shape[0]
    order = np.argsort(refs, kind="stable")
    nxt = np.full(n, n, dtype=np.int64)
    same = refs[order[1:]] == refs[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def belady_misses(refs: np.ndarray, sizes: np.ndarray, capacity: int) -> int:
    """Fewest unit misses of one cache of `capacity` units over the item references `refs`, knowing them all.

    Item `i` is `sizes[i]` units always referenced together, so they share every next use; a reference
    misses the item's units not in the cache, and the cache then keeps the units whose next use comes
    soonest, the referenced item's included (it may be left out: bypass), which is MIN unit by unit.
    """
    nxt = next_uses(refs).tolist()
    size = sizes.tolist()
    resident: dict[int, int] = {}
    due: dict[int, int] = {}
    """Per resident item: its next use (heap entries with another are stale)."""
    heap: list[tuple[int, int]] = []
    held = misses = 0
    for i, item in enumerate(refs.tolist()):
        units = size[item]
        missing = units - resident.get(item, 0)
        misses += missing
        held += missing
        resident[item] = units
        due[item] = nxt[i]
        heapq.heappush(heap, (-nxt[i], item))
        while held > capacity:
            key, victim = heap[0]
            if due.get(victim) != -key:
                heapq.heappop(heap)
                continue
            drop = min(held - capacity, resident[victim])
            held -= drop
            if drop == resident[victim]:
                del resident[victim], due[victim]
                heapq.heappop(heap)
            else:
                resident[victim] -= drop
    return misses


def adapter_reads(adapters: np.ndarray, capacity: int) -> int:
    """Fewest adapter reads of one cache of `capacity` adapters serving `adapters` in order."""
    if not adapters.size:
        return 0
    return belady_misses(adapters.astype(np.int64), np.ones(int(adapters.max()) + 1, dtype=np.int64), capacity)


def _runs(blocks: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The prompts' blocks (concatenated; `starts`: where each non-empty prompt begins) as runs of blocks
    with the same references: the sequence of runs referenced, numbered from 0, and each run's length."""
    _, inv, counts = np.unique(blocks, return_inverse=True, return_counts=True)
    pred = np.empty_like(inv)
    pred[1:] = inv[:-1]
    pred[starts] = -1
    pred_of = np.empty(counts.shape[0], dtype=inv.dtype)
    pred_of[inv] = pred
    if not np.array_equal(pred_of[inv], pred):
        raise ValueError("prompt blocks are not chain identities: a block follows different blocks")
    refs = counts[inv]
    begins = np.ones(blocks.shape[0], dtype=bool)
    begins[1:] = refs[1:] != refs[:-1]
    begins[starts] = True
    at = np.flatnonzero(begins)
    lengths = np.diff(np.append(at, blocks.shape[0]))
    runs, items = np.unique(inv[at], return_inverse=True)
    sizes = np.zeros(runs.shape[0], dtype=np.int64)
    sizes[items] = lengths
    return items, sizes


def prefilled_tokens(requests: Requests, capacity: int, block_tokens: int) -> int:
    """Fewest prompt tokens prefilled by a fleet whose prefix caches hold `capacity` blocks together."""
    prompt = requests.prompt_tokens.astype(np.int64)
    if requests.session is None or requests.system_tokens is None:
        return int(prompt.sum())
    prompts = [prompt_blocks(a, s, y, p, block_tokens) for a, s, y, p in zip(
        requests.adapter.tolist(), requests.session.tolist(), requests.system_tokens.tolist(), prompt.tolist(),
        strict=True)]
    full = np.array([len(b) for b in prompts], dtype=np.int64)
    labels: dict[int, int] = {}
    """Block -> where it first occurs: block ids outgrow int64 (bench.workloads.SYSTEM_OFFSET)."""
    blocks = np.fromiter(map(labels.setdefault, chain.from_iterable(prompts), count()), dtype=np.int64,
                         count=int(full.sum()))
    unsaved = np.where(full > 0, prompt - np.minimum(block_tokens * full, prompt - 1), prompt)
    misses = 0
    if blocks.size:
        starts = (np.cumsum(full) - full)[full > 0]
        misses = belady_misses(*_runs(blocks, starts), capacity)
    exact = int(np.count_nonzero((full > 0) & (block_tokens * full == prompt)))
    return int(unsaved.sum()) + block_tokens * misses - min(misses, exact)


def compute(requests: Requests, workers: int, params: PerfParams) -> Bound:
    return Bound(adapter_reads=adapter_reads(requests.adapter, workers * (params.host_slots + params.max_loras)),
                 prefilled_tokens=prefilled_tokens(requests, workers * params.kv_blocks, params.block_tokens))
