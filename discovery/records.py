"""What discovery writes to etcd, as msgspec records, and how a bad value is turned away.

Every value is JSON so that an operator can read it with etcdctl. Decoding is
strict (a missing or mistyped field is a MalformedRecord): another writer or
an older version of this code must never crash a watcher, only be skipped.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import msgspec
import xxhash

from allocator.model import Demand, Worker
from discovery.errors import MalformedRecord


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
    """One router's smoothed demand, under the leased key load/{router_id}."""

    router_id: str
    at: float
    adapters: dict[str, Demand] = {}


def encode(record: msgspec.Struct) -> bytes:
    return msgspec.json.encode(record)


def decode(value: bytes, kind: type[msgspec.Struct], key: str) -> msgspec.Struct:
    """Strict decode; raises MalformedRecord naming the key and what is wrong."""
    try:
        return msgspec.json.decode(value, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedRecord(f"{key}: not a {kind.__name__}: {exc}") from None


def decode_worker(key: str, value: bytes) -> WorkerRecord:
    record = decode(value, WorkerRecord, key)
    assert isinstance(record, WorkerRecord)
    if key.rpartition("/")[2] != record.id:
        raise MalformedRecord(f"{key}: record id {record.id!r} does not match its key")
    if not record.url or not record.base_models or record.slots < 0 or record.weight <= 0:
        raise MalformedRecord(f"{key}: needs a url, a base model, slots >= 0 and weight > 0")
    return record


def normalise_url(url: str) -> str:
    """One spelling per worker: lower-case scheme and host, explicit port, no trailing slash."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a worker URL: {url!r} (want http://host:port)")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return urlunsplit((parts.scheme, f"{host}:{port}", parts.path.rstrip("/"), "", ""))


def worker_id_for(url: str) -> str:
    """The default stable id: the same URL gives the same id on every host and every start."""
    return "w-" + xxhash.xxh64_hexdigest(normalise_url(url).encode())[:12]


def new_instance(start_time: float | None) -> str:
    """A fresh instance id; the worker's process start time (when observable) makes it readable."""
    tag = uuid.uuid4().hex[:12]
    return f"{int(start_time)}-{tag}" if start_time else tag
