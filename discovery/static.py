"""Static discovery: a fixed list of worker URLs behind the same `watch()` as the etcd registry.

For the single-process default (no etcd registrars): every interval each URL
is probed with the registrar's own code. A worker joins the membership the
first time it answers like vLLM and stays (the router's health checks decide
whether to send it traffic). Its instance id changes, exactly as a registrar
would change it, when it comes back after failing a probe or when its process
start time changes, so routers re-load its adapters after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence

import aiohttp

from discovery.errors import WorkerNotVllm, WorkerUnreachable
from discovery.probe import WorkerFacts, WorkerProbe
from discovery.records import new_instance
from discovery.registrar import RegistrarConfig, worker_record
from discovery.registry import Membership
from router.core.records import WorkerRecord

log = logging.getLogger(__name__)


class StaticDiscovery:
    def __init__(self, urls: Sequence[str], api_key: str | None = None, interval_s: float = 2.0,
                 slots: int = 8) -> None:
        self._configs = [RegistrarConfig(worker_url=u, slots=slots) for u in dict.fromkeys(urls)]
        self._api_key = api_key
        self._interval_s = interval_s
        self.unanswered: set[str] = set()
        """URLs whose last probe failed; a member among them gets a new instance when it answers again."""

    async def watch(self) -> AsyncIterator[Membership]:
        """Membership after the first round of probes and after every change seen since."""
        records: dict[str, WorkerRecord] = {}
        started: dict[str, float | None] = {}
        down = self.unanswered
        revision = 0
        async with aiohttp.ClientSession() as session:
            probes = [WorkerProbe(session, c.worker_url, self._api_key) for c in self._configs]
            while True:
                answers = await asyncio.gather(*(_ask(p) for p in probes))
                changed = revision == 0
                for config, facts in zip(self._configs, answers, strict=True):
                    url = config.worker_url
                    if facts is None:
                        if url in records and url not in down:
                            log.warning("static worker %s stopped answering", url)
                        down.add(url)
                        continue
                    restarted = url in down or (facts.start_time is not None and url in started
                                                and facts.start_time != started[url])
                    down.discard(url)
                    if url not in records or restarted:
                        records[url] = worker_record(config, facts, new_instance(facts.start_time), time.time())
                        started[url] = facts.start_time
                        changed = True
                if changed:
                    revision += 1
                    yield Membership(revision, {r.id: r for r in sorted(records.values(), key=lambda r: r.id)})
                await asyncio.sleep(self._interval_s)


async def _ask(probe: WorkerProbe) -> WorkerFacts | None:
    try:
        if not await probe.healthy():
            return None
        return await probe.facts()
    except (WorkerUnreachable, WorkerNotVllm) as exc:
        log.debug("static worker %s: %s", probe.url, exc)
        return None
