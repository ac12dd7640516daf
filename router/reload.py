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
from pathlib import Path

from allocator.config import ConfigError
from discovery.aio import wait_event
from router.config import changed_parts, key_files, load_config
from router.runtime import RouterRuntime

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
    def __init__(self, runtime: RouterRuntime, path: str | None) -> None:
        self._runtime = runtime
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
        return [*own, *key_files(self._runtime.config).values(), *self._runtime.worker_key_files()]

    def reload(self, trigger: str) -> bool:
        """Apply what changed; True when something did. Logs one line either way."""
        rt = self._runtime
        try:
            loaded = load_config(self._path)
        except ConfigError as exc:
            self.rejected += 1
            log.error("%s: config reload rejected, keeping version %s: %s", trigger, rt.loaded.version, exc)
            return False
        old = rt.loaded.version
        changed = changed_parts(rt.loaded, loaded)
        if changed:
            rt.apply_config(loaded)
        changed += [f"key of worker {w}" for w in rt.refresh_worker_keys()]
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
