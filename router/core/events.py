"""What can happen to the fleet as the router sees it: the only inputs `FleetState.apply` takes.

Each edge reports what it observed, and nothing else writes the state: the
membership, catalog and placement watchers; the reconciler (listings, loads,
drains, unloads); the request path (requests begun and ended, answers, failed
connections, a 404 from a supposed holder); the prober. Times are the edge's
monotonic clock, passed in, so the state machine runs the same under the
simulator's virtual time.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from allocator.model import Placement
from router.core.health import HealthRules
from router.core.prefix import PrefixRules
from router.core.records import AdapterRecord, WorkerRecord


class MembershipChanged(msgspec.Struct, frozen=True):
    """The registered workers now, by id (a watch's full view, not a delta)."""

    workers: Mapping[str, WorkerRecord]


class CatalogChanged(msgspec.Struct, frozen=True):
    """The whole catalog now, by adapter name."""

    adapters: Mapping[str, AdapterRecord]


class AdapterWritten(msgspec.Struct, frozen=True):
    """One catalog entry this router just wrote (the admin API), before its watch echoes it."""

    record: AdapterRecord


class AdapterDeleted(msgspec.Struct, frozen=True):
    name: str


class PlacementChanged(msgspec.Struct, frozen=True):
    placement: Placement


class RulesChanged(msgspec.Struct, frozen=True):
    """A reloaded config's health and prefix rules."""

    rules: HealthRules
    prefix: PrefixRules = PrefixRules()


class AdaptersListed(msgspec.Struct, frozen=True):
    """What a worker's /v1/models listed: its holdings, replacing what was known."""

    worker: str
    adapters: frozenset[str]


class LoadFinished(msgspec.Struct, frozen=True):
    """A load on the worker succeeded: it holds the adapter (and serves it, were it draining)."""

    worker: str
    adapter: str


class DrainStarted(msgspec.Struct, frozen=True):
    """The placement dropped the adapter here: no new requests for it, the worker still holds it."""

    worker: str
    adapter: str


class DrainCancelled(msgspec.Struct, frozen=True):
    """The placement wants the draining adapter here again: it serves it again."""

    worker: str
    adapter: str


class Unloaded(msgspec.Struct, frozen=True):
    worker: str
    adapter: str


class AdapterMissing(msgspec.Struct, frozen=True):
    """A supposed holder answered 404 for the adapter: it lost it (restart, unload behind our back)."""

    worker: str
    adapter: str


class Unreachable(msgspec.Struct, frozen=True):
    """A connection to the worker was refused, cut or went silent past its timeout."""

    worker: str
    at: float


class Answered(msgspec.Struct, frozen=True):
    """The worker answered a forwarded request with `status` (its 5xx count toward ejection)."""

    worker: str
    status: int
    at: float


class ProbeOk(msgspec.Struct, frozen=True):
    worker: str


class ProbeFailed(msgspec.Struct, frozen=True):
    worker: str
    at: float


class RequestBegun(msgspec.Struct, frozen=True):
    """A request was sent to the worker (or waits there for its adapter's load); `adapter` None: the base."""

    worker: str
    adapter: str | None
    prompt: tuple[int, ...] = ()
    """Its prompt's blocks (router.core.prefix): the worker will have them cached."""


class RequestEnded(msgspec.Struct, frozen=True):
    worker: str
    adapter: str | None


Event = (MembershipChanged | CatalogChanged | AdapterWritten | AdapterDeleted | PlacementChanged | RulesChanged
         | AdaptersListed | LoadFinished | DrainStarted | DrainCancelled | Unloaded | AdapterMissing | Unreachable
         | Answered | ProbeOk | ProbeFailed | RequestBegun | RequestEnded)
