"""The router's /metrics tells the truth (issue 14, item 7): real etcd, router processes and workers.

A follower reports etcd connected; time to first byte and requests in flight come from real traffic;
every known worker is exported healthy from the start and a departed one disappears; with
`serve --workers 2` every scrape answers for the whole router, whichever process it reaches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from control_helpers import WORKER_ARGS, router_config, until
from prometheus_client.parser import text_string_to_metric_families

from discovery.embedded import EmbeddedEtcd
from router.localfleet import base_url, registrar
from router.procs import ManagedProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(router: str) -> Samples:
    """One scrape on a new connection: with several processes on the port, each may reach another."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http, \
            http.get(router + "/metrics") as r:
        assert r.status == 200
        text = await r.text()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def series(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(ls)[label]: v for (n, ls), v in samples.items() if n == name}


async def complete(http: aiohttp.ClientSession, router: str, model: str, *, stream: bool = False) -> int:
    body = {"model": model, "prompt": "x", "max_tokens": 8, "stream": stream}
    async with http.post(router + "/v1/completions", json=body) as r:
        await r.read()
        return r.status


async def test_a_follower_reports_etcd_connected(start_workers: Callable, start_router: Callable,
                                                 adapter_dirs: Callable) -> None:
    root = adapter_dirs("a1").parent
    workers = [base_url(w) for w in start_workers(1, extra_args=WORKER_ARGS)]
    routers = [start_router(router_config(root, ["a1"]), workers=workers, router_id=f"r{i}").url
               for i in range(2)]

    async def one_leader_both_connected() -> list[Samples] | None:
        scraped = [await scrape(r) for r in routers]
        leaders = sum(total(s, "lora_router_leader") for s in scraped)
        connected = [total(s, "lora_router_etcd_connected") for s in scraped]
        return scraped if leaders == 1 and connected == [1, 1] else None
    await until(one_leader_both_connected, 15, "one leader, and etcd connected on both routers")


async def test_time_to_first_byte_and_in_flight_come_from_real_traffic(
        start_workers: Callable, start_router: Callable, adapter_dirs: Callable) -> None:
    root = adapter_dirs("a1").parent
    workers = [base_url(w) for w in start_workers(1, extra_args=(*WORKER_ARGS, "--slow-s", "1.0"))]
    router = start_router(router_config(root, ["a1"]), workers=workers).url
    async with aiohttp.ClientSession() as http:
        assert await complete(http, router, "a1") == 200  # loaded, so the slow requests below wait for the worker
        requests = [asyncio.create_task(complete(http, router, "a1", stream=i % 2 == 1)) for i in range(4)]

        async def four_in_flight() -> bool:
            return total(await scrape(router), "lora_router_inflight_requests") == 4
        await until(four_in_flight, 10, "four requests in flight")
        assert await asyncio.gather(*requests) == [200] * 4
    after = await scrape(router)
    assert total(after, "lora_router_inflight_requests") == 0
    assert total(after, "lora_router_time_to_first_byte_seconds_count", adapter="a1") == 5
    assert total(after, "lora_router_time_to_first_byte_seconds_sum", adapter="a1") >= 4 * 1.0, (
        "four of them waited a second for the worker's first byte")


@pytest.mark.parametrize("processes", [1, 2])
async def test_worker_health_is_exported_from_the_start_and_a_departed_worker_leaves(
        processes: int, tmp_path: Path, etcd: EmbeddedEtcd, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    root = adapter_dirs("a1").parent
    workers = start_workers(2, extra_args=WORKER_ARGS)
    registrars: list[ManagedProcess] = []
    try:
        for w in workers:
            registrars.append(registrar(tmp_path, etcd.endpoint, base_url(w), slots=4).start())
        router = start_router(router_config(root, ["a1"]), extra_args=("--workers", str(processes))).url

        async def both_healthy() -> dict[str, float] | None:
            healthy = series(await scrape(router), "lora_router_worker_healthy", "worker")
            return healthy if len(healthy) == 2 and set(healthy.values()) == {1.0} else None
        healthy = await until(both_healthy, 15, "both workers exported healthy")
        for _ in range(4):  # whichever process answers
            assert series(await scrape(router), "lora_router_worker_healthy", "worker") == healthy

        workers[0].kill()
        registrars[0].kill()

        async def one_left() -> dict[str, float] | None:
            seen = [series(await scrape(router), "lora_router_worker_healthy", "worker") for _ in range(4)]
            return seen[0] if all(len(s) == 1 for s in seen) else None
        left = await until(one_left, 20, "the departed worker's series gone from every scrape")
        assert set(left) < set(healthy)
    finally:
        for r in registrars:
            r.kill()


async def test_two_processes_answer_every_scrape_for_the_whole_router(
        start_workers: Callable, start_router: Callable, adapter_dirs: Callable) -> None:
    root = adapter_dirs("a1").parent
    workers = [base_url(w) for w in start_workers(2, extra_args=WORKER_ARGS)]
    router = start_router(router_config(root, ["a1"]), workers=workers, extra_args=("--workers", "2")).url
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        statuses = await asyncio.gather(*(complete(http, router, "a1") for _ in range(100)))
    assert statuses == [200] * 100

    async def none_in_flight() -> bool:  # the other process's count is as of its last tick
        return all([total(await scrape(router), "lora_router_inflight_requests") == 0 for _ in range(4)])
    await until(none_in_flight, 5, "no request in flight on any scrape")
    for _ in range(8):
        scraped = await scrape(router)
        assert total(scraped, "lora_router_requests_total", route="/v1/completions", status="200") == 100
        assert total(scraped, "lora_router_time_to_first_byte_seconds_count", adapter="a1") == 100
        assert total(scraped, "lora_router_leader") == 1
        assert total(scraped, "lora_router_etcd_connected") == 1
        assert total(scraped, "lora_router_inflight_requests") == 0
        assert total(scraped, "process_resident_memory_bytes") > 0
        assert total(scraped, "process_cpu_seconds_total") > 0
        assert series(scraped, "lora_router_build_info", "version") == {_version(): 1.0}


def _version() -> str:
    from importlib.metadata import version
    return version("lora-router")
