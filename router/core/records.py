"""The records routers, registrars and the leader share through etcd, and what their fields mean.

They live in the core because routing decisions read them (a worker's base models, rank limit and
cache entries; an adapter's base, tenant and failure mark); discovery encodes and decodes them. A
cache entry's name is a digest of the source URI, so the path a router asks vLLM to load
(`cache_dir/<entry>`) follows from the catalog record and the worker's record alone.
"""

from __future__ import annotations

import hashlib
import os
from urllib.parse import urlsplit

import msgspec

from allocator.model import Demand, Worker

REMOTE_SCHEMES = ("s3", "https", "hf")


class WorkerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One registered worker, under the leased key workers/{id}."""

    id: str
    """STABLE across restarts (configured, or derived from the URL): the worker's identity for HRW hashing."""
    url: str
    base_models: tuple[str, ...] = ()
    slots: int = 8
    weight: float = 1.0
    max_lora_rank: int = 16
    max_loras: int | None = None
    """vLLM's --max-loras as its /metrics reports it; None when not observable."""
    max_num_seqs: int | None = None
    """vLLM's --max-num-seqs; None when not observable (vLLM shows it nowhere a registrar reads, so only
    the simulator, which knows its engines, sets it)."""
    instance: str = ""
    """Changes on every worker start: routers re-load a worker's adapters when it changes."""
    labels: dict[str, str] = {}
    api_key_ref: str | None = None
    """Where the ROUTER finds this worker's API key (a file path or env var name); never the key itself."""
    registered_at: float = 0.0
    cache_dir: str | None = None
    """Where this worker's fetcher puts remote adapters (discovery.fetch), as the worker reads the path;
    None when the registrar fetches nothing (remote sources then go to the worker unchanged)."""
    cached: tuple[str, ...] = ()
    """Cache entries (discovery.fetch.layout.entry_name of a source) complete on the worker's disk."""
    fetch_failures: dict[str, str] = {}
    """Cache entry -> why fetching its source failed for good ("reason: detail"); cleared by a new source."""

    def to_worker(self) -> Worker:
        return Worker(id=self.id, base_model=self.base_models[0] if self.base_models else "",
                      slots=self.slots, weight=self.weight, max_lora_rank=self.max_lora_rank)


class AdapterFailure(msgspec.Struct, frozen=True, kw_only=True):
    """Why an adapter is marked failed: every worker it was placed on refused to load it."""

    reason: str
    """The workers' refusal, classified: not_found, rank_too_high, rejected, unauthorized, ..."""
    detail: str
    workers: tuple[str, ...]
    since: float
    """Wall-clock time it was first marked."""


class AdapterRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One catalog entry, under the durable key adapters/{name}."""

    name: str
    source: str
    """Where workers load it from: a local path or a URI the workers understand."""
    base_model: str
    rank: int = 8
    tenant: str | None = None
    created_at: float = 0.0
    failed: AdapterFailure | None = None
    """Set by the leader while every worker placed for it refuses it, cleared once one holds it: requests
    fail at once instead of trying loads; the reconciler keeps retrying with backoff. A write of the
    record (a new source, load_inplace) clears it."""


class DemandReport(msgspec.Struct, frozen=True, kw_only=True):
    """One router's smoothed demand, under the leased key load/{router_id}; a large one is cut into chunks,
    the others under load/{router_id}/{k} (discovery.stores.DemandStore). `at`: when the chunk was written."""

    router_id: str
    at: float
    adapters: dict[str, Demand] = {}


def scheme(source: str) -> str:
    """The source's scheme, lower case; "file" for a bare absolute path."""
    head, sep, _ = source.partition("://")
    return head.lower() if sep else "file"


def is_remote(source: str) -> bool:
    return scheme(source) in REMOTE_SCHEMES


def entry_name(source: str) -> str:
    """The cache entry of a source: 32 hex digits of its SHA-256 (a new source is a new entry)."""
    return hashlib.sha256(source.encode()).hexdigest()[:32]


def cache_status(cache_dir: str | None, cached: tuple[str, ...], failures: dict[str, str],
                 source: str) -> tuple[str, str]:
    """Where a worker stands with a remote source: ("ready", local path), ("failed", why),
    ("fetching", "") or ("no_cache", "") when its registrar fetches nothing."""
    if cache_dir is None:
        return "no_cache", ""
    name = entry_name(source)
    if name in cached:
        return "ready", os.path.join(cache_dir, name)
    if name in failures:
        return "failed", failures[name]
    return "fetching", ""


def adapter_path(source: str) -> str:
    """What vLLM's lora_path receives: a local path for file sources, the repo id for hf://."""
    parts = urlsplit(source)
    if parts.scheme == "file":
        return parts.path
    if parts.scheme == "hf":
        return (parts.netloc + parts.path).partition("@")[0]
    return source


class PlacementHeader(msgspec.Struct, frozen=True, kw_only=True):
    """The placement's header (key placement/epoch); each replica set has its own key, placement/sets/{name}.

    The leader writes an epoch's changed sets in as many transactions as etcd's limits need, each also
    writing this header; `complete` is set by the epoch's last one. Readers take an epoch only once it is
    complete, so none acts on a half-written one.
    """

    epoch: int
    computed_at: float = 0.0
    complete: bool = True
