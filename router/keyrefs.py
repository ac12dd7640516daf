"""Per-worker API keys: a registry record names where the key lives, the router reads it there.

The record carries only the reference (`env:NAME`, `file:/path`, an absolute
path, or a bare environment variable name), never the key, so etcd never
holds a secret. A reference that cannot be resolved falls back to the global
worker key, with one warning naming the reference (not a value).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from router.core.fleetstate import FleetState
from router.workers import WorkerClient

log = logging.getLogger(__name__)


class KeyRefUnresolved(Exception):
    """The reference names no readable file or set environment variable."""


def resolve_key_ref(ref: str) -> str:
    path = key_ref_path(ref)
    if path is not None:
        return _file(path)
    return _env(ref.removeprefix("env:"))


def key_ref_path(ref: str) -> str | None:
    """The file a reference names (watched for rotation), or None for an environment variable."""
    if ref.startswith("env:"):
        return None
    if ref.startswith("file:"):
        return ref[5:]
    return ref if os.path.isabs(ref) else None


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise KeyRefUnresolved(f"environment variable {name} is not set")
    return value


def _file(path: str) -> str:
    try:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise KeyRefUnresolved(f"cannot read {path}: {exc.strerror}") from None
    if not lines:
        raise KeyRefUnresolved(f"{path} is empty")
    return lines[0]


class WorkerKeys:
    """Resolved keys per worker id, refreshed when membership changes and on a reload (a rotated key file);
    warns once per bad reference."""

    def __init__(self) -> None:
        self._warned: set[str] = set()

    def resolve(self, ref: str | None) -> str | None:
        if not ref:
            return None
        try:
            key = resolve_key_ref(ref)
        except KeyRefUnresolved as exc:
            if ref not in self._warned:
                self._warned.add(ref)
                log.warning("worker key reference %s unresolved (%s); using the global worker key", ref, exc)
            return None
        if not key.isprintable():
            if ref not in self._warned:
                self._warned.add(ref)
                log.warning("the key behind worker key reference %s holds control characters; ignored", ref)
            return None
        return key


class WorkerCredentials:
    """The key the router shows each worker: its own (its record's reference) or the global worker key.

    The request path reads a pre-built `Authorization` line per worker; the worker client (loads,
    listings) gets the same keys by URL. Refreshed when the membership changes and on a reload."""

    def __init__(self, state: FleetState, client: WorkerClient) -> None:
        self._state = state
        self._client = client
        self._keys = WorkerKeys()
        self._lines: dict[str, str] = {}
        self._global_line = ""

    def configure(self, global_key: str | None) -> None:
        self._global_line = f"Authorization: Bearer {global_key}\r\n" if global_key else ""

    def line(self, worker_id: str) -> str:
        return self._lines.get(worker_id, self._global_line)

    def refresh(self) -> list[str]:
        """Re-resolve every worker's reference; the ids of workers whose key changed (for the reload's
        log line; never the keys)."""
        by_url: dict[str, str] = {}
        lines: dict[str, str] = {}
        for view in self._state.workers.values():
            key = self._keys.resolve(view.record.api_key_ref)
            if key is not None:
                by_url[view.url] = key
                lines[view.id] = f"Authorization: Bearer {key}\r\n"
        self._client.set_worker_keys(by_url)
        old, self._lines = self._lines, lines
        return sorted(w for w in old.keys() | lines.keys() if old.get(w) != lines.get(w))

    def key_files(self) -> list[str]:
        """Files the workers' key references name: a reload re-reads them, the reloader watches them."""
        refs = {view.record.api_key_ref for view in self._state.workers.values()}
        return sorted({path for ref in refs if ref and (path := key_ref_path(ref)) is not None})
