"""What a placement costs and how even it is: churn between two placements, expected loads.

Shared by the plan command, the benchmark and the tests so that every figure
means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from allocator.model import Placement, Worker


def assignments(placement: Placement) -> set[tuple[str, str]]:
    """Every (adapter, worker) pair the placement asks for."""
    return {(a, w) for a, rs in placement.replica_sets.items() for w in rs.workers}


def moved(before: Placement, after: Placement) -> int:
    """Assignments that are new in `after`: each one is an adapter load somewhere."""
    return len(assignments(after) - assignments(before))


def fair_share(placement: Placement, workers: Sequence[Worker], weight: float = 1.0) -> float:
    """Assignments a worker of `weight` would hold if the placement's were spread evenly by weight.

    Churn is read against it: a join's (placement and workers after the join) is what the newcomer
    should receive; a leave's (before it) is what the leaving worker held on average.
    """
    total_weight = sum(w.weight for w in workers)
    return len(assignments(placement)) * weight / total_weight if total_weight else 0.0


def expected_loads(placement: Placement, workers: Iterable[Worker]) -> dict[str, float]:
    """Each worker's expected rps: every adapter's demand split evenly over its workers."""
    loads = {w.id: 0.0 for w in workers}
    for rs in placement.replica_sets.values():
        if rs.workers:
            share = rs.demand_rps / len(rs.workers)
            for w in rs.workers:
                loads[w] += share
    return loads


def imbalance(loads: Mapping[str, float], workers: Sequence[Worker]) -> float:
    """max / mean of expected load per unit weight (1.0 = perfectly even, and when idle)."""
    total_weight = sum(w.weight for w in workers)
    mean = sum(loads[w.id] for w in workers) / total_weight if total_weight else 0.0
    if mean <= 0:
        return 1.0
    return max(loads[w.id] / w.weight for w in workers) / mean


def slot_overflow(placement: Placement, workers: Iterable[Worker]) -> int:
    """Assignments beyond the workers' slot capacity (0 when bounds hold)."""
    count: dict[str, int] = {}
    for rs in placement.replica_sets.values():
        for w in rs.workers:
            count[w] = count.get(w, 0) + 1
    return sum(max(0, count.get(w.id, 0) - w.slots) for w in workers)
