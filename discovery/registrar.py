"""The registrar sidecar: announce one vLLM worker in etcd for exactly as long as it is healthy.

Life cycle, repeated until stopped:
  wait for /health -> read base model(s) (/v1/models) and max_lora (/metrics)
  -> register under a lease with a NEW instance id -> check /health every
  interval -> after N failures in a row withdraw (the record goes at once)
  -> wait for the worker to come back, and register again with a new instance.
A worker that restarts between two checks is caught by its process start time
(read from /metrics every few checks): same record, new instance id. Either
way routers see the instance change and re-load the worker's adapters.
Stopping (SIGTERM) withdraws the record at once; a killed registrar's record
expires with its lease after the TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from discovery.aio import wait_event
from discovery.errors import EtcdUnavailable, WorkerNotVllm, WorkerUnreachable
from discovery.probe import WorkerFacts, WorkerProbe
from discovery.records import new_instance, worker_id_for
from discovery.registry import Registration, WorkerRegistry
from router.core.records import WorkerRecord

log = logging.getLogger(__name__)


class RegistrarConfig(msgspec.Struct, frozen=True, kw_only=True):
    worker_url: str
    worker_id: str | None = None
    slots: int = 8
    """Adapters the placement may put on the worker; set it to the worker's --max-cpu-loras. Not taken from
    max_lora (/metrics): that bounds adapters in one batch, not adapters held (1 by default in vLLM)."""
    weight: float = 1.0
    max_lora_rank: int = 16
    labels: dict[str, str] = {}
    api_key_ref: str | None = None
    ttl: int = 10
    health_failures: int = 3
    health_interval_s: float = 2.0
    restart_check_every: int = 5
    """Read the worker's start time every this many health checks (0: never)."""
    cache_dir: str | None = None
    """The adapter cache this registrar's fetcher fills (discovery.fetch), as the worker sees the path."""


def worker_record(config: RegistrarConfig, facts: WorkerFacts, instance: str, now: float) -> WorkerRecord:
    """The record to register for what the worker just told us (pure)."""
    return WorkerRecord(
        id=config.worker_id or worker_id_for(config.worker_url), url=config.worker_url.rstrip("/"),
        base_models=facts.base_models, slots=config.slots, weight=config.weight,
        max_lora_rank=config.max_lora_rank, max_loras=facts.max_loras, instance=instance,
        labels=dict(config.labels), api_key_ref=config.api_key_ref, registered_at=now, cache_dir=config.cache_dir)


class Registrar:
    def __init__(self, registry: WorkerRegistry, probe: WorkerProbe, config: RegistrarConfig) -> None:
        self._registry = registry
        self._probe = probe
        self._config = config
        self.registration: Registration | None = None
        self.registrations = 0
        """How many times a record was registered (first start, comebacks, restarts caught by start time)."""
        self._cache: tuple[tuple[str, ...], dict[str, str]] = ((), {})
        self._cache_unsent = False

    async def set_cache(self, cached: tuple[str, ...], failures: dict[str, str]) -> None:
        """The fetcher's news: put it in the record now, or at the next health check if etcd is away."""
        self._cache = (cached, failures)
        self._cache_unsent = True
        await self._send_cache()

    async def _send_cache(self) -> None:
        if self.registration is None or not self._cache_unsent:
            return
        cached, failures = self._cache
        record = msgspec.structs.replace(self.registration.record, cached=cached, fetch_failures=failures)
        try:
            await self.registration.update(record)
        except EtcdUnavailable as exc:
            log.warning("could not publish the adapter cache of %s yet: %s", record.id, exc)
            return
        self._cache_unsent = False

    async def run(self, stop: asyncio.Event) -> None:
        """Register, watch, withdraw, again, until `stop` is set; then withdraw and return."""
        try:
            while not stop.is_set():
                facts = await self._wait_for_worker(stop)
                if facts is None:
                    break
                if await self._register(facts, stop):
                    await self._follow(facts, stop)
                await self._withdraw()
        finally:
            await self._withdraw()

    async def _wait_for_worker(self, stop: asyncio.Event) -> WorkerFacts | None:
        """The worker's facts once it is healthy and answers like vLLM; None if stopped first."""
        reported = False
        while not stop.is_set():
            try:
                if await self._probe.healthy():
                    return await self._probe.facts()
                reason = "not healthy yet"
            except (WorkerUnreachable, WorkerNotVllm) as exc:
                reason = str(exc)
            if not reported:
                log.info("waiting for worker %s: %s", self._probe.url, reason)
                reported = True
            await wait_event(stop, self._config.health_interval_s)
        return None

    async def _register(self, facts: WorkerFacts, stop: asyncio.Event) -> bool:
        record = msgspec.structs.replace(
            worker_record(self._config, facts, new_instance(facts.start_time), time.time()),
            cached=self._cache[0], fetch_failures=self._cache[1])
        reported = False
        while not stop.is_set():
            try:
                self.registration = await self._registry.register(record, self._config.ttl)
            except EtcdUnavailable as exc:
                if not reported:
                    log.warning("cannot register %s yet (retrying): %s", record.id, exc)
                    reported = True
                await wait_event(stop, 0.5)
                continue
            self.registrations += 1
            self._cache_unsent = False
            log.info("registered worker %s (%s) instance %s, bases %s, slots %d", record.id, record.url,
                     record.instance, ",".join(record.base_models), record.slots)
            return True
        return False

    async def _follow(self, facts: WorkerFacts, stop: asyncio.Event) -> None:
        """Health-check until N failures in a row (return) or stop; re-announce a restart seen by start time."""
        failures = 0
        checks = 0
        start_time = facts.start_time
        every = self._config.restart_check_every
        while not await wait_event(stop, self._config.health_interval_s):
            if not await self._probe.healthy():
                failures += 1
                log.warning("worker %s failed its health check (%d/%d)", self._probe.url, failures,
                            self._config.health_failures)
                if failures >= self._config.health_failures:
                    return
                continue
            failures = 0
            checks += 1
            await self._send_cache()
            if start_time is not None and every and checks % every == 0:
                _, now_started = await self._probe.metrics()
                if now_started is not None and now_started != start_time and \
                        await self._announce_restart(now_started):
                    start_time = now_started

    async def _announce_restart(self, start_time: float) -> bool:
        """Re-put the record with a new instance; False (retried at the next check) if etcd is away."""
        assert self.registration is not None
        record = msgspec.structs.replace(self.registration.record, instance=new_instance(start_time),
                                         registered_at=time.time())
        log.info("worker %s restarted (start time %.0f): new instance %s", record.id, start_time, record.instance)
        try:
            await self.registration.update(record)
        except EtcdUnavailable as exc:
            log.warning("could not announce the restart of %s yet: %s", record.id, exc)
            return False
        self.registrations += 1
        return True

    async def _withdraw(self) -> None:
        registration, self.registration = self.registration, None
        if registration is None:
            return
        try:
            await registration.withdraw()
            log.info("withdrew worker %s", registration.record.id)
        except EtcdUnavailable as exc:
            log.warning("could not withdraw %s (its record expires within %ds): %s", registration.record.id,
                        self._config.ttl, exc)

