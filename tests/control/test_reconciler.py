"""The reconciler in one process against real simulated workers: the placement is set by hand, the
reconciler drives the workers to it. Drains, restarts, failure reasons and rate limits, seen from outside."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from control_helpers import BASE, held, until

from allocator.model import Placement, ReplicaSet
from router.config import load_config
from router.core.events import (
    CatalogChanged,
    MembershipChanged,
    PlacementChanged,
    RequestBegun,
    RequestEnded,
)
from router.core.fleetstate import FleetState
from router.core.records import AdapterRecord, WorkerRecord
from router.live import LiveConfig
from router.localfleet import base_url
from router.metrics import RouterMetrics
from router.reconciler import Reconciler
from router.workers import WorkerClient


class Harness:
    """A router's fleet state with the reconciler running; the test plays the watchers' part."""

    def __init__(self, state: FleetState, reconciler: Reconciler, urls: list[str]) -> None:
        self.state = state
        self.reconciler = reconciler
        self.urls = urls
        self.epoch = 0

    def ids(self) -> list[str]:
        return [f"w{i}" for i in range(len(self.urls))]

    def membership(self, instances: dict[str, str] | None = None) -> None:
        records = {wid: WorkerRecord(id=wid, url=url, base_models=(BASE,), instance=(instances or {}).get(wid, "i0"))
                   for wid, url in zip(self.ids(), self.urls, strict=True)}
        change = self.state.apply(MembershipChanged(records))
        if change.changed:
            self.reconciler.on_membership(change)

    def catalog(self, *records: AdapterRecord) -> None:
        self.state.apply(CatalogChanged({r.name: r for r in records}))

    def only(self, record: AdapterRecord, *workers: str) -> None:
        """A catalog of one adapter, placed on `workers`."""
        self.catalog(record)
        self.place(**{record.name: workers})

    def place(self, **sets: tuple[str, ...]) -> None:
        self.epoch += 1
        self.state.apply(PlacementChanged(Placement(epoch=self.epoch, replica_sets={
            name: ReplicaSet(workers=ws, replicas=len(ws)) for name, ws in sets.items()})))
        self.reconciler.on_placement()


def _config(tmp_path: Path, root: Path, **extra: Any) -> Path:
    config = {"security": {"allowed_path_prefixes": [str(root)]},
              "control": {"reconcile_s": 0.5, "retry_base_s": 0.05, "retry_max_s": 0.2},
              "timeouts": {"drain_timeout_s": 20.0}, **extra}
    path = tmp_path / "router.yaml"
    path.write_bytes(msgspec.json.encode(config))
    return path


@pytest.fixture
async def harness(tmp_path: Path, adapter_dirs: Callable) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[asyncio.Task[None], aiohttp.ClientSession]] = []

    async def make(urls: list[str], **extra: Any) -> Harness:
        root = adapter_dirs("placeholder").parent
        session = aiohttp.ClientSession()
        loaded = load_config(_config(tmp_path, root, **extra))
        state = FleetState()
        client = WorkerClient(session, loaded.secrets.worker_api_key, loaded.config.timeouts.worker_call_s)
        reconciler = Reconciler(state, client, RouterMetrics(10), LiveConfig(loaded), rng=random.Random(2))
        h = Harness(state, reconciler, urls)
        h.membership()
        made.append((asyncio.create_task(reconciler.run()), session))
        return h

    yield make
    for task, session in made:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await session.close()


def _record(path: Path, rank: int = 8) -> AdapterRecord:
    return AdapterRecord(name=path.name, source=str(path), base_model=BASE, rank=rank)


async def test_loads_confirms_then_marks_holders(http: aiohttp.ClientSession, harness: Callable,
                                                start_workers: Callable, adapter_dirs: Callable) -> None:
    urls = [base_url(w) for w in start_workers(2)]
    h = await harness(urls)
    a, b = _record(adapter_dirs("a")), _record(adapter_dirs("b"))
    h.catalog(a, b)
    h.place(a=("w0", "w1"), b=("w1",))

    async def converged() -> bool:
        return (await held(http, urls[0]) == {"a"} and await held(http, urls[1]) == {"a", "b"}
                and h.state.holders("a") == {"w0", "w1"} and h.state.holders("b") == {"w1"})

    await until(converged, 10, "both workers to hold their adapters and be marked holders")


async def test_a_drain_waits_for_requests_in_flight_before_the_unload(
        http: aiohttp.ClientSession, harness: Callable, start_workers: Callable, adapter_dirs: Callable) -> None:
    urls = [base_url(w) for w in start_workers(2)]
    h = await harness(urls)
    h.only(_record(adapter_dirs("a")), "w0", "w1")
    await until(lambda: _holders(h, "a", {"w0", "w1"}), 10, "two holders")

    h.state.apply(RequestBegun("w0", "a"))
    h.place(a=("w1",))
    await until(lambda: _draining(h, "w0", "a"), 10, "w0 to start draining 'a'")
    assert [v.id for v in h.state.routable_holders("a")] == ["w1"], "no new requests go to a draining worker"
    target = h.reconciler.passes + 10
    await until(lambda: _passes_after(h, target), 10, "ten more reconciler passes")
    assert "a" in await held(http, urls[0]), "unloaded while a request was still in flight"
    h.state.apply(RequestEnded("w0", "a"))
    await until(lambda: _not_held(http, urls[0], "a"), 10, "the unload once the request finished")
    assert h.state.holders("a") == {"w1"}


async def _passes_after(h: Harness, n: int) -> bool:
    return h.reconciler.passes >= n


async def _holders(h: Harness, name: str, expected: set[str]) -> bool:
    return h.state.holders(name) == expected


async def _draining(h: Harness, worker: str, name: str) -> bool:
    return name in h.state.workers[worker].draining


async def _not_held(http: aiohttp.ClientSession, url: str, name: str) -> bool:
    return name not in await held(http, url)


async def test_make_before_break_keeps_the_old_holder_until_the_new_one_holds(
        http: aiohttp.ClientSession, harness: Callable, start_workers: Callable, adapter_dirs: Callable) -> None:
    urls = [base_url(w) for w in start_workers(2)]
    h = await harness(urls)
    h.only(_record(adapter_dirs("a")), "w0")
    await until(lambda: _holders(h, "a", {"w0"}), 10, "w0 holds 'a'")
    seen: list[set[str]] = []

    async def moved() -> bool:
        seen.append(set(h.state.holders("a")))
        return h.state.holders("a") == {"w1"} and not await _held_by(http, urls[0], "a")

    h.place(a=("w1",))
    await until(moved, 10, "the move from w0 to w1", interval_s=0.005)
    assert all(seen), "there was a moment with no routable holder at all"


async def _held_by(http: aiohttp.ClientSession, url: str, name: str) -> bool:
    return name in await held(http, url)


async def test_an_adapter_unloaded_behind_our_back_or_lost_in_a_restart_comes_back(
        http: aiohttp.ClientSession, harness: Callable, start_workers: Callable, adapter_dirs: Callable) -> None:
    urls = [base_url(w) for w in start_workers(1)]
    h = await harness(urls)
    h.only(_record(adapter_dirs("a")), "w0")
    await until(lambda: _held_by(http, urls[0], "a"), 10, "'a' loaded")
    async with http.post(urls[0] + "/v1/unload_lora_adapter", json={"lora_name": "a"}) as r:
        assert r.status == 200
    await until(lambda: _held_by(http, urls[0], "a"), 2 * 0.5, "'a' back within two reconcile periods")
    async with http.post(urls[0] + "/v1/unload_lora_adapter", json={"lora_name": "a"}) as r:
        assert r.status == 200
    h.membership({"w0": "i1"})
    assert not h.state.holders("a"), "a restarted worker holds nothing until it lists it"
    await until(lambda: _held_by(http, urls[0], "a"), 0.5, "'a' reloaded at once after the instance change")


async def test_permanent_failures_are_recorded_with_their_reason(
        harness: Callable, start_workers: Callable, adapter_dirs: Callable) -> None:
    urls = [base_url(w) for w in start_workers(1, extra_args=("--max-lora-rank", "8"))]
    h = await harness(urls)
    big = _record(adapter_dirs("big", rank=64), rank=64)
    missing = AdapterRecord(name="missing", source=str(adapter_dirs("a").parent / "nowhere"), base_model=BASE)
    h.catalog(big, missing)
    h.place(big=("w0",), missing=("w0",))

    async def recorded() -> bool:
        return bool(h.reconciler.failures("big")) and bool(h.reconciler.failures("missing"))

    await until(recorded, 10, "failures for both adapters")
    assert h.reconciler.failures("big")["w0"].reason == "rank_too_high"
    assert h.reconciler.failures("missing")["w0"].reason == "not_found"
    attempts = h.reconciler.failures("big")["w0"].attempts
    await until(lambda: _attempts_after(h, "big", attempts), 5, "a retry after the backoff")
    assert h.reconciler.failures("big")["w0"].reason == "rank_too_high"


async def _attempts_after(h: Harness, name: str, n: int) -> bool:
    return h.reconciler.failures(name)["w0"].attempts > n


async def test_a_worker_that_wants_a_key_shows_unauthorized(
        harness: Callable, start_workers: Callable, adapter_dirs: Callable) -> None:
    urls = [base_url(w) for w in start_workers(1, extra_args=("--api-key", "k-123"))]
    h = await harness(urls)
    h.only(_record(adapter_dirs("a")), "w0")
    await until(lambda: _failed_with(h, "a", "unauthorized"), 10, "an unauthorized failure")
    assert "unauthorized" in h.reconciler.worker_errors()["w0"]
    assert "k-123" not in repr(h.reconciler.failures("a"))


async def _failed_with(h: Harness, name: str, reason: str) -> bool:
    failure = h.reconciler.failures(name).get("w0")
    return failure is not None and failure.reason == reason


async def test_transient_failures_are_retried_until_the_worker_answers(
        http: aiohttp.ClientSession, harness: Callable, start_workers: Callable, adapter_dirs: Callable,
        tmp_path: Path) -> None:
    from discovery.ports import free_port
    from router.localfleet import sim_worker

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    h = await harness([url])
    h.only(_record(adapter_dirs("a")), "w0")
    await until(lambda: _failed_with(h, "a", "transient"), 10, "a transient failure while nothing listens")
    worker = sim_worker(tmp_path, port=port).start()
    try:
        await until(lambda: _held_by(http, url, "a"), 10, "the retried load once the worker is up")
        await until(lambda: _no_failure(h, "a"), 5, "the failure to clear")
    finally:
        worker.kill()


async def _no_failure(h: Harness, name: str) -> bool:
    return not h.reconciler.failures(name)


async def test_loads_on_one_worker_are_rate_limited(
        http: aiohttp.ClientSession, harness: Callable, start_workers: Callable, adapter_dirs: Callable) -> None:
    urls = [base_url(w) for w in start_workers(1)]
    h = await harness(urls, control={"reconcile_s": 0.5, "worker_ops_per_s": 10.0})
    records = [_record(adapter_dirs(f"r{i}")) for i in range(8)]
    h.catalog(*records)
    started = time.monotonic()
    h.place(**{r.name: ("w0",) for r in records})
    await until(lambda: _holds_all(http, urls[0], {r.name for r in records}), 10, "all eight loaded")
    assert time.monotonic() - started >= 0.7, "eight loads at 10/s take at least 0.7 s"


async def _holds_all(http: aiohttp.ClientSession, url: str, names: set[str]) -> bool:
    return names <= await held(http, url)


async def test_a_worker_that_does_not_answer_is_listed_again_with_backoff(harness: Callable) -> None:
    """10,000 unreachable workers were 2,000 failing listings a second from every router (every
    `reconcile_s`), enough to starve its event loop; a worker that does not answer is now asked less often."""
    attempts: list[float] = []

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(time.monotonic())
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await harness([f"http://127.0.0.1:{port}"], control={"reconcile_s": 0.1, "retry_max_s": 5.0})
        await until(lambda: _at_least(attempts, 11), 30, "six listings of the worker that does not answer")
    finally:
        server.close()
    listings = [t for i, t in enumerate(attempts) if i == 0 or t - attempts[i - 1] > 0.05]  # one try may connect twice
    # every 0.1 s, 5 more listings take 0.5 s; with backoff (x2 each time, jitter 0.5-1.5) at least 1.6 s
    assert len(listings) >= 6 and listings[5] - listings[0] > 1.2, [round(t - attempts[0], 2) for t in attempts]


async def _at_least(items: list[float], n: int) -> bool:
    return len(items) >= n
