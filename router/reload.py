"""Config hot reload: on SIGHUP or when the file changes, re-read it; keep the old one if the new is bad.

Requests in flight hold the config objects they started with, so a swap drops
nothing; replica-factor settings are read by the control loop at each tick.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from allocator.config import ConfigError
from discovery.aio import wait_event
from router.config import load_config
from router.runtime import RouterRuntime

log = logging.getLogger(__name__)

POLL_S = 1.0


class ConfigReloader:
    def __init__(self, runtime: RouterRuntime, path: str | None) -> None:
        self._runtime = runtime
        self._path = Path(path) if path else None
        self._wake = asyncio.Event()
        self.reloads = 0
        self.rejected = 0

    def request(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        if self._path is None:
            return
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.request)
        seen = self._stamp()
        while True:
            await wait_event(self._wake, POLL_S)
            forced = self._wake.is_set()
            self._wake.clear()
            stamp = self._stamp()
            if forced or stamp != seen:
                seen = stamp
                self.reload()

    def reload(self) -> bool:
        try:
            loaded = load_config(self._path)
        except ConfigError as exc:
            self.rejected += 1
            log.error("config reload rejected, keeping version %s: %s", self._runtime.loaded.version, exc)
            return False
        if loaded.version == self._runtime.loaded.version:
            return False
        self._runtime.apply_config(loaded)
        self.reloads += 1
        log.info("config reloaded: version %s", loaded.version)
        return True

    def _stamp(self) -> tuple[int, int] | None:
        assert self._path is not None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size
