"""Choosing one worker among candidates: power of two choices on in-flight counts, minding GPU LoRA slots.

Why slots matter: a vLLM batch holds at most `max_loras` distinct adapters and
`max_num_seqs` sequences. A request whose adapter is not in the batch of a
worker that already runs `max_loras` others waits until one of them drains
completely, and busy adapters keep their slots for long stretches: in the
fleet simulator that wait was nearly all of lora-router's slowest 1 % of first
tokens. A worker with `max_num_seqs` requests in flight queues any newcomer:
a hot adapter held by one worker while its replicas are being loaded (a fleet
starting, a flash crowd) piles up there. In-flight counts, per worker and per
adapter, which the router keeps anyway, bound what the batch holds and so tell
whether a request can join at once; `pick_with_room` uses them, and the caller
decides what to do when no holder has room (load the adapter on a worker that
has). A limit that is not known (None) is not checked.

Among holders with room, a request whose prompt a worker likely has cached
(router.core.prefix) goes there unless the requests already in flight there
cost more than the prefill it saves (`pick_cached`): a conversation stays on
its worker while that worker has room, and moves when it has none.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Hashable, Iterable, Sequence
from typing import Protocol, TypeVar

from router.core.prefix import PrefixIndex, PrefixRules


class Busy(Protocol):
    @property
    def inflight(self) -> int: ...


class Slotted(Busy, Protocol):
    @property
    def adapter_inflight(self) -> Collection[Hashable]:
        """The adapters with requests in flight on this worker (queued there or running), e.g. the keys
        of a per-adapter count such as `router.core.fleetstate.WorkerState.adapter_inflight`."""
        ...

    @property
    def max_loras(self) -> int | None:
        """Distinct adapters its batch holds at once; None when not known."""
        ...

    @property
    def max_seqs(self) -> int | None:
        """Sequences its batch holds at once; None when not known."""
        ...


class Cached(Slotted, Protocol):
    @property
    def prefix(self) -> PrefixIndex:
        """The blocks this router sent the worker lately (router.core.prefix)."""
        ...


B = TypeVar("B", bound=Busy)
S = TypeVar("S", bound=Slotted)
C = TypeVar("C", bound=Cached)


def power_of_two(candidates: Sequence[B], rng: random.Random) -> B:
    """Two random candidates, the less busy wins: near least-loaded without herding on one worker."""
    n = len(candidates)
    if n == 1:
        return candidates[0]
    i = rng.randrange(n)
    j = rng.randrange(n - 1)
    if j >= i:
        j += 1
    a, b = candidates[i], candidates[j]
    return a if a.inflight <= b.inflight else b


def has_room(worker: Slotted, adapter: Hashable) -> bool:
    """Whether a request for `adapter` can join the worker's batch at once: fewer than `max_seqs`
    requests are in flight there, and the adapter is in flight there already or fewer than
    `max_loras` adapters are."""
    if worker.max_seqs is not None and worker.inflight >= worker.max_seqs:
        return False
    inflight = worker.adapter_inflight
    return worker.max_loras is None or adapter in inflight or len(inflight) < worker.max_loras


def pick_with_room(candidates: Sequence[S], adapter: Hashable, rng: random.Random) -> S | None:
    """Power of two among the candidates with room for `adapter`; None when none has room."""
    roomy = [c for c in candidates if has_room(c, adapter)]
    return power_of_two(roomy, rng) if roomy else None


def pick_cached(candidates: Sequence[C], adapter: Hashable, prompt: Sequence[int], rules: PrefixRules,
                rng: random.Random) -> tuple[C, int] | None:
    """Among the candidates with room for `adapter`, the one where the prompt's likely cached prefix saves
    the most against the requests in flight there (each worth `rules.tokens_per_request` cached tokens),
    equals by power of two; with the blocks it likely has cached. A prompt cached nowhere goes by power of
    two alone, as `pick_with_room` does. None when no candidate has room."""
    roomy = [c for c in candidates if has_room(c, adapter)]
    if not roomy:
        return None
    matched = [c.prefix.matched(prompt) for c in roomy]
    if len(roomy) == 1 or not any(matched):
        chosen = power_of_two(roomy, rng)
        return chosen, matched[roomy.index(chosen)]
    worth = rules.block_tokens / rules.tokens_per_request
    scores = [m * worth - c.inflight for m, c in zip(matched, roomy, strict=True)]
    best = max(scores)
    top = [i for i, score in enumerate(scores) if score == best]
    i = top[0] if len(top) == 1 else roomy.index(power_of_two([roomy[i] for i in top], rng))
    return roomy[i], matched[i]


def first_with_room(ranked: Iterable[S], adapter: Hashable) -> S | None:
    """The best-ranked worker with room for `adapter` (an HRW order, so that routers agree on where an
    overflowing adapter goes and its loads coalesce there); None when none has room."""
    return next((w for w in ranked if has_room(w, adapter)), None)
