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
