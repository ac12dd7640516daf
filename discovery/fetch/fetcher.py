"""The fetcher loop beside one worker: download what the placement puts here, publish what is ready.

Wanted: every catalog adapter with a remote source that the placement puts on
this worker or that the worker holds. Each wanted source missing from the
cache is downloaded once (one task per entry, at most `concurrency` at a time),
verified, and admitted to the cache; a transient failure is retried with
backoff, a permanent one (bad archive, bad adapter, too large, not found) is
published with its reason and not retried for that source. Pinned, so never
evicted: entries the worker holds, entries the placement puts here (a router
is loading them or will), and entries admitted in the last `pin_s` (a cold
start may be loading one outside the placement).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from allocator.model import Placement
from discovery.aio import wait_event
from discovery.errors import WorkerNotVllm, WorkerUnreachable
from discovery.etcd import EtcdClient
from discovery.fetch.cache import AdapterCache
from discovery.fetch.layout import allowed
from discovery.fetch.sources import HfDownload, SourceSettings, download
from discovery.fetch.verify import FetchError, check_adapter
from discovery.stores import CatalogStore, PlacementStore
from router.core.records import AdapterRecord, entry_name, is_remote

log = logging.getLogger(__name__)

Publish = Callable[[tuple[str, ...], dict[str, str]], Awaitable[None]]
Held = Callable[[], Awaitable[set[str]]]


class FetcherConfig(msgspec.Struct, frozen=True, kw_only=True):
    cache_dir: str
    cache_bytes: int = 20 << 30
    max_adapter_bytes: int = 2 << 30
    max_lora_rank: int = 16
    allowed_prefixes: list[str] = []
    """Remote sources this worker may fetch (prefixes such as s3://bucket/adapters/); empty: any."""
    sources: SourceSettings = SourceSettings()
    concurrency: int = 2
    pin_s: float = 300.0
    poll_s: float = 2.0
    """How often the worker's holdings are read and retries come due, between catalog/placement changes."""
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0


class FetchMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.hits = Counter("lora_router_fetch_cache_hits", "Wanted adapters found in the cache", registry=r)
        self.misses = Counter("lora_router_fetch_cache_misses", "Wanted adapters that had to be downloaded",
                              registry=r)
        self.bytes = Counter("lora_router_fetch_bytes", "Bytes of adapters downloaded and admitted", registry=r)
        self.seconds = Histogram("lora_router_fetch_download_seconds", "Download + verify time per adapter",
                                 buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600), registry=r)
        self.failures = Counter("lora_router_fetch_failures", "Failed fetches by reason", ["reason"], registry=r)
        self.evictions = Counter("lora_router_fetch_evictions", "Cache entries evicted to make room", registry=r)
        self.cache_bytes = Gauge("lora_router_fetch_cache_bytes", "Bytes held in the adapter cache", registry=r)


class Fetcher:
    def __init__(self, client: EtcdClient, worker_id: str, config: FetcherConfig, publish: Publish, held: Held,
                 session: aiohttp.ClientSession, metrics: FetchMetrics | None = None,
                 hf_download: HfDownload | None = None) -> None:
        self._catalog_store = CatalogStore(client)
        self._placement_store = PlacementStore(client)
        self._worker_id = worker_id
        self._config = config
        self._publish = publish
        self._held = held
        self._session = session
        self._hf_download = hf_download
        self.metrics = metrics or FetchMetrics()
        self.cache = AdapterCache(Path(config.cache_dir), config.cache_bytes)
        self.metrics.cache_bytes.set(self.cache.used_bytes)
        self._catalog: dict[str, AdapterRecord] = {}
        self._known: dict[str, str] = {}
        """adapter -> source, for the catalog and for adapters the worker still holds after they left it."""
        self._placement = Placement()
        self._holds: set[str] = set()
        self._failures: dict[str, tuple[str, str]] = {}
        """entry -> (source, "reason: detail") of a permanent failure."""
        self._retry: dict[str, tuple[float, int]] = {}
        """entry -> (monotonic time the next try is due, attempts so far) after transient failures."""
        self._admitted: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wanted: set[str] = set()
        self._pinned: set[str] = set()
        self._published: tuple[tuple[str, ...], dict[str, str]] | None = None
        self._sem = asyncio.Semaphore(config.concurrency)
        self._kick = asyncio.Event()
        self._rng = random.Random()
        log.info("adapter cache %s: %d entries, %d of %d bytes", config.cache_dir, len(self.cache.entries),
                 self.cache.used_bytes, config.cache_bytes)

    def state(self) -> tuple[tuple[str, ...], dict[str, str]]:
        """(complete entries, entry -> permanent failure) as the worker record carries them."""
        return tuple(sorted(self.cache.entries)), {e: why for e, (_, why) in sorted(self._failures.items())}

    async def run(self) -> None:
        watchers = [asyncio.create_task(self._follow_catalog(), name="fetch:catalog"),
                    asyncio.create_task(self._follow_placement(), name="fetch:placement")]
        try:
            while True:
                self._kick.clear()
                await self._round()
                await wait_event(self._kick, self._config.poll_s)
        finally:
            for task in [*watchers, *self._tasks.values()]:
                task.cancel()
            await asyncio.gather(*watchers, *self._tasks.values(), return_exceptions=True)

    async def _follow_catalog(self) -> None:
        async for adapters in self._catalog_store.watch():
            self._catalog = adapters
            self._kick.set()

    async def _follow_placement(self) -> None:
        async for placement in self._placement_store.watch():
            self._placement = placement
            self._kick.set()

    async def _round(self) -> None:
        try:
            self._holds = await self._held()
        except (WorkerUnreachable, WorkerNotVllm) as exc:  # keep the last holdings; fetching goes on
            log.debug("cannot read the worker's adapters: %s", exc)
        now = time.monotonic()
        self._known = {n: s for n, s in self._known.items() if n in self._holds}
        self._known.update((n, r.source) for n, r in self._catalog.items())
        held = {entry_name(self._known[n]) for n in self._holds if n in self._known}
        wanted: dict[str, str] = {}
        for name, record in self._catalog.items():
            replica_set = self._placement.replica_sets.get(name)
            placed = replica_set is not None and self._worker_id in replica_set.workers
            if is_remote(record.source) and (placed or name in self._holds):
                wanted[entry_name(record.source)] = record.source
        self._pinned = set(wanted) | held | {e for e, at in self._admitted.items() if now - at < self._config.pin_s}
        live = {entry_name(r.source) for r in self._catalog.values()}
        self._failures = {e: f for e, f in self._failures.items() if e in live}
        for entry, source in wanted.items():
            if entry in self.cache.entries:
                if entry not in self._wanted:
                    self.metrics.hits.inc()
                    self.cache.touch(entry)
                continue
            failed = self._failures.get(entry)
            if entry in self._tasks or (failed is not None and failed[0] == source) or \
                    self._retry.get(entry, (0.0, 0))[0] > now:
                continue
            if not allowed(source, self._config.allowed_prefixes):
                self._fail(entry, source, FetchError("not_allowed", f"{source} is not under an allowed prefix "
                                                     "(--allow-source)"))
                continue
            self.metrics.misses.inc()
            self._tasks[entry] = asyncio.create_task(self._fetch(entry, source), name=f"fetch:{entry}")
        self._wanted = set(wanted)
        state = self.state()
        if state != self._published:
            await self._publish(*state)
            self._published = state

    async def _fetch(self, entry: str, source: str) -> None:
        try:
            async with self._sem:
                started = time.monotonic()
                staging = self.cache.staging(entry)
                try:
                    await download(source, staging, self._config.sources, self._config.max_adapter_bytes,
                                   self._session, self._hf_download)
                    size = await asyncio.to_thread(check_adapter, staging, self._config.max_lora_rank,
                                                   self._config.max_adapter_bytes)
                    evicted = self.cache.admit(entry, staging, size, self._pinned)
                except FetchError as exc:
                    self.cache.discard(staging)
                    self._fail(entry, source, exc)
                    return
                except Exception as exc:
                    self.cache.discard(staging)
                    log.exception("fetch of %s failed unexpectedly", source)
                    self._fail(entry, source, FetchError("internal", type(exc).__name__, permanent=False))
                    return
            seconds = time.monotonic() - started
            self._admitted[entry] = time.monotonic()
            self._retry.pop(entry, None)
            self._failures.pop(entry, None)
            self.metrics.bytes.inc(size)
            self.metrics.seconds.observe(seconds)
            self.metrics.evictions.inc(len(evicted))
            self.metrics.cache_bytes.set(self.cache.used_bytes)
            log.info("fetched %s into %s/%s: %d bytes in %.2fs%s", source, self._config.cache_dir, entry, size,
                     seconds, f", evicted {', '.join(evicted)}" if evicted else "")
        finally:
            self._tasks.pop(entry, None)
            self._kick.set()

    def _fail(self, entry: str, source: str, exc: FetchError) -> None:
        self.metrics.failures.labels(exc.reason).inc()
        if exc.permanent:
            self._failures[entry] = (source, f"{exc.reason}: {exc.detail}")
            self._retry.pop(entry, None)
            log.warning("fetch of %s refused (%s): %s", source, exc.reason, exc.detail)
            return
        attempts = self._retry.get(entry, (0.0, 0))[1] + 1
        delay = min(self._config.retry_max_s, self._config.retry_base_s * 2 ** (attempts - 1))
        self._retry[entry] = (time.monotonic() + delay * (0.5 + self._rng.random()), attempts)
        log.warning("fetch of %s failed (%s, try %d, retrying): %s", source, exc.reason, attempts, exc.detail)
