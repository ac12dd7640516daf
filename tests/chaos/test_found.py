"""What the chaos scenarios found, each pinned by a small test against real processes."""

from __future__ import annotations

import signal
from collections.abc import Callable

import aiohttp

from allocator.model import Action, Placement, ReplicaSet
from bench.chaos.observe import loras, status, time_until, worker_holds
from bench.promtext import metric_sum
from router.core.reconcile_plan import WorkerWork, worker_work
from router.core.records import AdapterRecord
from router.localfleet import base_url

WORKER_ARGS = ("--max-loras", "4", "--speed", "0.01")


async def test_a_404_from_the_only_holder_is_answered_after_loading_it_there_again(
        start_workers: Callable, start_router: Callable, adapter_dirs: Callable) -> None:
    """etcd-outage found it: a cold adapter unloaded by another router's reconciler answered 502.

    The 404 dropped the worker from the holders and the retry cold-started the
    adapter on its first HRW worker, the same one; that worker was excluded as
    "tried", so the request failed although the adapter was loaded again.
    """
    source = adapter_dirs("solo")
    url = base_url(start_workers(1, extra_args=WORKER_ARGS)[0])
    config = {"security": {"allowed_path_prefixes": [str(source.parent)]},
              "control": {"tick_s": 0.3, "reconcile_s": 600.0},
              "adapters": [{"name": "solo", "source": str(source), "base_model": "sim-base"}]}
    router = start_router(config, workers=[url]).url
    async with aiohttp.ClientSession() as session:
        async def held() -> bool:
            return bool((await loras(session, router))["solo"]["holders"])

        assert await time_until(held, 20) is not None, "the router never loaded 'solo'"
        async with session.post(url + "/v1/unload_lora_adapter", json={"lora_name": "solo"}) as r:
            assert r.status == 200
        assert "solo" not in await worker_holds(session, url)
        body = {"model": "solo", "prompt": "x", "max_tokens": 2, "ignore_eos": True}
        async with session.post(router + "/v1/completions", json=body) as r:
            assert r.status == 200, await r.text()
        assert "solo" in await worker_holds(session, url)


async def test_a_leader_paused_past_its_lease_stops_claiming_leadership_the_moment_it_resumes(
        start_workers: Callable, start_router: Callable, adapter_dirs: Callable) -> None:
    """leader-kill found it: a resumed leader said `is_leader: true` (status and metrics) until its next tick,
    while another router led: two leaders, as far as anyone asking could tell."""
    source = adapter_dirs("one")
    url = base_url(start_workers(1, extra_args=WORKER_ARGS)[0])
    config = {"security": {"allowed_path_prefixes": [str(source.parent)]},
              "control": {"tick_s": 1.0, "lease_ttl_s": 1},
              "adapters": [{"name": "one", "source": str(source), "base_model": "sim-base"}]}
    routers = [start_router(config, workers=[url], router_id=f"r{i}") for i in range(2)]
    async with aiohttp.ClientSession() as session:
        async def one_leader() -> bool:
            return sum([(await status(session, r.url))["is_leader"] for r in routers]) == 1

        assert await time_until(one_leader, 20) is not None, "no single leader"
        claims = [(await status(session, r.url))["is_leader"] for r in routers]
        old = routers[claims.index(True)]
        other = next(r for r in routers if r is not old)
        old.proc.signal(signal.SIGSTOP)
        try:
            async def took_over() -> bool:
                return (await status(session, other.url))["is_leader"]

            assert await time_until(took_over, 20) is not None, "the other router never took over"
        finally:
            old.proc.signal(signal.SIGCONT)
        view = await status(session, old.url)
        async with session.get(old.url + "/metrics") as r:
            leader_gauge = metric_sum(await r.text(), "lora_router_leader")
    assert not view["is_leader"], "the resumed router still claims leadership"
    assert leader_gauge == 0


def test_while_etcd_is_unreachable_a_cold_started_adapter_is_not_unloaded_and_its_grace_restarts_after() -> None:
    """etcd-outage found it: with the placement frozen at zero replicas, every router unloaded the cold
    adapters it had just loaded once the grace passed, under their clients (a 20 s outage at 10 req/s over
    10 cold adapters: 155 cold starts and 188 unloads instead of 10 and 0)."""
    placement = Placement(epoch=1, replica_sets={"cold": ReplicaSet(workers=(), replicas=0)})
    catalog = {"cold": AdapterRecord(name="cold", source="/adapters/cold", base_model="base", rank=8)}
    actions = [Action(kind="unload", worker="w1", adapter="cold")]
    idle: dict[tuple[str, str], float] = {}

    def work(now: float, stale: bool) -> dict[str, WorkerWork]:
        return worker_work(actions, placement, catalog, {"cold"}, idle, now, 2.0, placement_stale=stale)

    assert work(0.0, stale=True) == {"w1": WorkerWork()}
    assert work(10.0, stale=True) == {"w1": WorkerWork()}, "unloaded while the placement could not see demand"
    assert work(11.0, stale=False) == {"w1": WorkerWork()}, "the grace starts when etcd is back"
    assert work(13.0, stale=False) == {"w1": WorkerWork(unloads=["cold"])}
