"""The worker's adapter cache on disk: complete entries only, bounded in bytes, evicted least recently used.

Layout: `ROOT/<entry>/` is a complete, verified adapter (what vLLM loads);
`ROOT/.tmp/` holds downloads in progress and entries on their way out. An entry
appears with one rename from `.tmp` and leaves with one rename into it, so vLLM
never sees a half-written or half-deleted adapter; `.tmp` is wiped at start,
which is all the recovery a crash needs. A restart keeps every entry: the
cache is re-read from the directory (sizes from the files, recency from the
directory's mtime, which `touch` refreshes).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Collection, Mapping
from pathlib import Path

import msgspec

from discovery.fetch.layout import TMP_DIR
from discovery.fetch.verify import FetchError, tree_bytes

_ENTRY = re.compile(r"[0-9a-f]{32}")


class CacheEntry(msgspec.Struct, kw_only=True):
    bytes: int
    used: float
    """Wall-clock time of the last use (mtime of the entry directory)."""


def plan_eviction(entries: Mapping[str, CacheEntry], need: int, bound: int,
                  pinned: Collection[str]) -> list[str] | None:
    """Entries to remove, least recently used first, so `need` more bytes fit in `bound`; never a pinned
    one. None when even evicting every unpinned entry would not make room."""
    used = sum(e.bytes for e in entries.values())
    evict: list[str] = []
    for name, entry in sorted(entries.items(), key=lambda kv: (kv[1].used, kv[0])):
        if used + need <= bound:
            break
        if name in pinned:
            continue
        evict.append(name)
        used -= entry.bytes
    return evict if used + need <= bound else None


class AdapterCache:
    def __init__(self, root: Path, bound: int) -> None:
        self.root = root
        self.bound = bound
        self.tmp = root / TMP_DIR
        self.entries: dict[str, CacheEntry] = {}
        self.scan()

    def scan(self) -> None:
        """Forget partial work (.tmp) and take every complete entry on disk."""
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self.entries = {p.name: CacheEntry(bytes=tree_bytes(p), used=p.stat().st_mtime)
                        for p in self.root.iterdir() if p.is_dir() and _ENTRY.fullmatch(p.name)}

    @property
    def used_bytes(self) -> int:
        return sum(e.bytes for e in self.entries.values())

    def touch(self, name: str) -> None:
        entry = self.entries.get(name)
        if entry is not None:
            entry.used = time.time()
            os.utime(self.root / name, (entry.used, entry.used))

    def staging(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name + ".", dir=self.tmp))

    def admit(self, name: str, staging: Path, size: int, pinned: Collection[str]) -> list[str]:
        """Publish a verified staging directory as entry `name`, evicting what must go; the names evicted.
        Raises FetchError("cache_full") (transient) when pinned entries leave no room."""
        evict = plan_eviction(self.entries, size, self.bound, pinned)
        if evict is None:
            raise FetchError("cache_full", f"{size} bytes do not fit in the cache ({self.used_bytes} of "
                             f"{self.bound} bytes used by adapters the worker holds or is placed to hold)",
                             permanent=size > self.bound)
        for old in evict:
            self.remove(old)
        os.chmod(staging, 0o755)
        staging.rename(self.root / name)
        self.entries[name] = CacheEntry(bytes=size, used=time.time())
        return evict

    def remove(self, name: str) -> None:
        self.entries.pop(name, None)
        path = self.root / name
        if path.is_dir():
            gone = Path(tempfile.mkdtemp(prefix=name + ".evicted.", dir=self.tmp))
            path.rename(gone / name)
            shutil.rmtree(gone, ignore_errors=True)

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
