"""The allocator's plain data: what it is given and what it decides.

Everything here is a frozen msgspec Struct so that the same values can be
hashed, compared, written to etcd as JSON and read back on every router
replica without a translation layer.
"""

from __future__ import annotations

import msgspec


class Worker(msgspec.Struct, frozen=True, kw_only=True):
    """A placement candidate. `id` is STABLE across restarts (configured or derived from the URL)."""

    id: str
    base_model: str
    slots: int = 8
    """How many adapters the placement may assign to this worker."""
    weight: float = 1.0
    """Relative capacity (e.g. GPU size); scales its HRW score and its share of load."""
    max_lora_rank: int = 16


class Adapter(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    base_model: str
    rank: int = 8


class Demand(msgspec.Struct, frozen=True, kw_only=True):
    """Smoothed demand for one adapter, summed over all routers."""

    rps: float = 0.0
    inflight: float = 0.0


class ReplicaSet(msgspec.Struct, frozen=True, kw_only=True):
    """Where one adapter should live.

    `replicas` is the size the sizing step asked for; `workers` may be shorter
    when candidates or slots ran out. `resized_at` is when `replicas` last
    changed: the next leader needs it to honour the scale-down cooldown.
    """

    workers: tuple[str, ...]
    replicas: int
    resized_at: float = 0.0
    demand_rps: float = 0.0


class Placement(msgspec.Struct, frozen=True, kw_only=True):
    """The whole fleet's desired placement at one tick."""

    epoch: int = 0
    computed_at: float = 0.0
    replica_sets: dict[str, ReplicaSet] = {}
    unplaced: tuple[str, ...] = ()
    """Adapters that got fewer workers than asked for (no candidate or no slot left)."""


class Action(msgspec.Struct, frozen=True, kw_only=True):
    """One step towards the desired placement, for the reconciler to carry out."""

    kind: str  # "load" | "unload"
    worker: str
    adapter: str
