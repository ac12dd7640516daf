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

from discovery.errors import MalformedRecord
from router.core.records import WorkerRecord


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
