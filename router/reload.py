"""Config hot reload: on SIGHUP or when the file or a key file it names changes, re-read everything.

The config version covers the YAML and every key file it names (admin, tenant and worker keys), so a
rotated or revoked key applies without an edit of the YAML; the files named by workers' key references
are re-read at the same moments. A bad new config is rejected and the old one kept. Every SIGHUP logs
one line, saying what changed or that nothing did; the line names files, never keys.

Requests in flight hold the config objects they started with, so a swap drops nothing; replica-factor
settings are read by the control loop at each tick.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from allocator.config import ConfigError
from discovery.aio import wait_event
from router.config import LoadedConfig, changed_parts, key_files, load_config
from router.keyrefs import WorkerCredentials
from router.live import LiveConfig

log = logging.getLogger(__name__)

POLL_S = 1.0

Stamp = tuple[int, int, int] | None


def file_stamp(path: str) -> Stamp:
    """Identity, mtime and size, following links: a Kubernetes volume update swaps a symlink, which
    changes the inode even when the size and the second of the mtime do not."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ConfigReloader:
    def __init__(self, live: LiveConfig, path: str | None, apply: Callable[[LoadedConfig], None],
                 credentials: WorkerCredentials) -> None:
        """`apply`: hands a new config to everything built from the old one (router.server wires it)."""
        self._live = live
        self._apply = apply
        self._credentials = credentials
        self._path = Path(path) if path else None
        self._wake = asyncio.Event()
        self.reloads = 0
        self.rejected = 0
        self._seen = self._stamps()
        """As of construction, right after the config was loaded: an edit from then on is a change."""

    def request(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request)
        while True:
            await wait_event(self._wake, POLL_S)
            forced = self._wake.is_set()
            self._wake.clear()
            stamps = self._stamps()
            # A file not watched before (a worker naming a new key file) may have changed since it was
            # read: it counts as changed too.
            moved = [p for p, stamp in stamps.items() if p not in self._seen or self._seen[p] != stamp]
            self._seen = stamps
            if forced or moved:
                self.reload("SIGHUP" if forced else "file change")

    def watched(self) -> list[str]:
        own = [str(self._path)] if self._path is not None else []
        return [*own, *key_files(self._live.config).values(), *self._credentials.key_files()]

    def reload(self, trigger: str) -> bool:
        """Apply what changed; True when something did. Logs one line either way."""
        live = self._live
        try:
            loaded = load_config(self._path)
        except ConfigError as exc:
            self.rejected += 1
            log.error("%s: config reload rejected, keeping version %s: %s", trigger, live.loaded.version, exc)
            return False
        old = live.loaded.version
        changed = changed_parts(live.loaded, loaded)
        if changed:
            self._apply(loaded)
        changed += [f"key of worker {w}" for w in self._credentials.refresh()]
        if not changed:
            # Asked for (SIGHUP): say so. Found by the watcher (a touch, a new worker's key file): quiet.
            log.log(logging.INFO if trigger == "SIGHUP" else logging.DEBUG,
                    "%s: nothing changed, config version %s", trigger, old)
            return False
        self.reloads += 1
        named = [loaded.source if part == "config" else part for part in changed]
        log.info("%s: config version %s -> %s, changed: %s", trigger, old, loaded.version, ", ".join(named))
        return True

    def _stamps(self) -> dict[str, Stamp]:
        return {path: file_stamp(path) for path in self.watched()}
