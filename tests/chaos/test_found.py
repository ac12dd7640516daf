"""What the chaos scenarios found, each pinned by a small test against real processes."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp

from bench.chaos.observe import loras, time_until, worker_holds
from router.devfleet import worker_url

WORKER_ARGS = ("--max-loras", "4", "--speed", "0.01")


async def test_a_404_from_the_only_holder_is_answered_after_loading_it_there_again(
        start_workers: Callable, start_router: Callable, adapter_dirs: Callable) -> None:
    """etcd-outage found it: a cold adapter unloaded by another router's reconciler answered 502.

    The 404 dropped the worker from the holders and the retry cold-started the
    adapter on its first HRW worker, the same one; that worker was excluded as
    "tried", so the request failed although the adapter was loaded again.
    """
    source = adapter_dirs("solo")
    url = worker_url(start_workers(1, extra_args=WORKER_ARGS)[0])
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
