"""Which path a worker is told to load: the local copy its fetcher made of a remote source.

A remote source (s3://, https://, hf://) is fetched beside each worker into
`cache_dir/<entry>` (discovery.fetch); the worker's record says which entries
are complete and which failed for good. Loading waits for the entry within the
caller's budget (a cold start: its timeout; the reconciler: not at all, it
retries with backoff), and every waiter wakes when any worker record changes.
"""

from __future__ import annotations

import asyncio

from router.core.fleetstate import FleetState
from router.core.records import (
    AdapterRecord,
    WorkerRecord,
    adapter_path,
    cache_status,
    is_remote,
    scheme,
)
from router.workers import AdapterRejected, WorkerCallFailed


def status(record: WorkerRecord, source: str) -> tuple[str, str]:
    return cache_status(record.cache_dir, record.cached, record.fetch_failures, source)


class SourceLocator:
    def __init__(self, state: FleetState) -> None:
        self._state = state
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """Worker records changed (a fetch finished or failed): wake the loads waiting on one."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def path(self, base_url: str, adapter: AdapterRecord, wait_s: float) -> str:
        """The lora_path for `adapter` on the worker at `base_url`; waits up to `wait_s` for its fetch.
        Raises AdapterRejected for a fetch that failed for good, WorkerCallFailed while it is still due."""
        source = adapter.source
        if not is_remote(source):
            return adapter_path(source)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            view = next((v for v in self._state.workers.values() if v.url == base_url), None)
            state, detail = status(view.record, source) if view is not None else ("no_cache", "")
            if state == "ready":
                return detail
            if state == "failed":
                raise AdapterRejected("fetch_failed", f"fetching {source} beside the worker failed: {detail}")
            if state == "no_cache":
                if scheme(source) == "hf":
                    return adapter_path(source)
                raise AdapterRejected("no_fetcher", f"the worker has no adapter cache to fetch {source} into "
                                      "(start its registrar with --cache-dir)")
            left = deadline - loop.time()
            if left <= 0:
                raise WorkerCallFailed(f"{source} is still being fetched beside the worker")
            changed = self._changed
            try:
                async with asyncio.timeout(left):
                    await changed.wait()
            except TimeoutError:
                pass
