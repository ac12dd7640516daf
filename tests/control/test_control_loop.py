"""The control loop end to end: replicas follow demand, drains lose nothing, lost adapters come back,
worker keys, two routers and a leader change, config reload. Real etcd, routers and workers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from control_helpers import WORKER_ARGS, Traffic, get_json, held, router_config, until

from discovery.embedded import EmbeddedEtcd
from router.localfleet import base_url, sim_worker
from router.procs import ManagedProcess, python_cli

SLOW = ("--slow-s", "0.2")
"""Requests take long enough that a drain has something to wait for."""


async def _lora(http: aiohttp.ClientSession, router: str, name: str) -> dict[str, Any]:
    return await get_json(http, router + f"/v1/loras/{name}")


def _replicas(n: int, view: dict[str, Any]) -> bool:
    return len(view["replica_set"]) == n and len(view["holders"]) == n and not view["draining"]


async def test_replicas_follow_demand_up_and_down_with_no_failed_request(
        http: aiohttp.ClientSession, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    root = adapter_dirs("hot").parent
    workers = [base_url(w) for w in start_workers(3, extra_args=(*WORKER_ARGS, *SLOW))]
    cooldown_s = 2.0
    placement = {"defaults": {"per_replica_rps": 4.0, "per_replica_concurrent": None,
                              "scale_down_cooldown_s": cooldown_s}, "fall_tau_s": 0.5}
    router = start_router(router_config(root, ["hot"], placement=placement), workers=workers).url
    await until(lambda: _one_of(http, router, "hot", 1), 15, "one replica of 'hot' at rest")

    traffic = Traffic(http, router, "hot", rps=14.0, max_tokens=30).start()
    try:
        view = await until(lambda: _one_of(http, router, "hot", 3), 15, "three replicas under load")
        scaled_up = time.monotonic()
        assert view["demand_rps"] > 8.0
        traffic.rps = 2.0
        await until(lambda: _one_of(http, router, "hot", 1), 30, "back to one replica")
        held_for = time.monotonic() - scaled_up
    finally:
        await traffic.stop()
    assert held_for >= cooldown_s - 0.5, "scaled down before the cooldown"
    assert traffic.statuses and not traffic.errors, traffic.errors[:5]
    held_by = [u for u in workers if "hot" in await held(http, u)]
    assert len(held_by) == 1, "the dropped replicas were unloaded from their workers"


async def _one_of(http: aiohttp.ClientSession, router: str, name: str, n: int) -> dict[str, Any] | None:
    view = await _lora(http, router, name)
    return view if _replicas(n, view) else None


async def test_lost_adapters_are_loaded_again_within_two_reconcile_periods(
        http: aiohttp.ClientSession, start_workers: Callable, start_router: Callable, adapter_dirs: Callable,
        tmp_path: Path) -> None:
    names = ["r0", "r1", "r2"]
    root = adapter_dirs(names[0]).parent
    for n in names[1:]:
        adapter_dirs(n)
    procs = start_workers(2, extra_args=WORKER_ARGS)
    workers = [base_url(w) for w in procs]
    config = router_config(root, names, placement={"defaults": {"min_replicas": 2}})
    reconcile_s = config["control"]["reconcile_s"]
    router = start_router(config, workers=workers).url

    async def everywhere() -> bool:
        return all(set(names) <= h for h in [await held(http, u) for u in workers])

    await until(everywhere, 15, "every adapter on both workers")
    traffic = [Traffic(http, router, n, rps=5.0).start() for n in names]
    try:
        async with http.post(workers[1] + "/v1/unload_lora_adapter", json={"lora_name": "r1"}) as r:
            assert r.status == 200
        await until(everywhere, 2 * reconcile_s + 0.5, "r1 back after an unload behind the router's back")

        port = int(workers[0].rsplit(":", 1)[1])
        procs[0].kill()
        restarted = sim_worker(tmp_path, port=port, extra_args=WORKER_ARGS).start()
        try:
            await until(everywhere, 2 * reconcile_s + 0.5, "the restarted worker to hold its adapters again")
        finally:
            restarted.kill()
    finally:
        for t in traffic:
            await t.stop()
    statuses = [s for t in traffic for s in t.statuses]
    assert 404 not in statuses, [e for t in traffic for e in t.errors][:5]


async def test_workers_with_an_api_key(http: aiohttp.ClientSession, start_workers: Callable,
                                       start_router: Callable, adapter_dirs: Callable, tmp_path: Path,
                                       etcd: EmbeddedEtcd) -> None:
    """One worker behind --api-key, registered by its registrar; a router with the key and one without."""
    secret = "worker-secret-7f3a"
    root = adapter_dirs("guarded").parent
    url = base_url(start_workers(1, extra_args=(*WORKER_ARGS, "--api-key", secret))[0])
    key_file = tmp_path / "worker.key"
    key_file.write_text(secret + "\n")
    registrar = ManagedProcess(python_cli("router", "register", "--etcd", etcd.endpoint, "--worker-url", url,
                                          "--api-key-file", str(key_file), "--ttl", "2"),
                               log_path=tmp_path / "registrar.log").start()
    try:
        keyed = start_router(router_config(root, ["guarded"], worker_api_key_file=str(key_file)),
                             router_id="keyed")
        bare = start_router(router_config(root, ["guarded"]), router_id="bare", ready=False)
        await until(lambda: _has_holder(http, keyed.url, "guarded"), 15, "the keyed router to load 'guarded'")
        body = {"model": "guarded", "prompt": "x", "max_tokens": 2, "ignore_eos": True}
        async with http.post(keyed.url + "/v1/completions", json=body) as r:
            assert r.status == 200, await r.text()

        async def unauthorized() -> dict[str, Any] | None:
            failures = (await _lora(http, bare.url, "guarded"))["failures"]
            return failures if any(f["reason"] == "unauthorized" for f in failures.values()) else None

        failures = await until(unauthorized, 15, "an 'unauthorized' failure on the router without the key")
        assert all(f["permanent"] for f in failures.values())
        status = await get_json(http, bare.url + "/v1/router/status")
        assert all("unauthorized" in (w["error"] or "") for w in status["workers"])
        for router in (keyed, bare):
            for route in ("/v1/router/status", "/v1/loras", "/v1/loras/guarded", "/metrics"):
                async with http.get(router.url + route) as r:
                    assert secret not in await r.text()
            router.proc.stop()
            assert router.proc.log_path is not None
            assert secret not in router.proc.log_path.read_text(), "the worker key was logged"
    finally:
        registrar.kill()


async def _has_holder(http: aiohttp.ClientSession, router: str, name: str) -> bool:
    return bool((await _lora(http, router, name))["holders"])


async def test_two_routers_share_one_placement_and_survive_the_leader(
        http: aiohttp.ClientSession, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    names = ["t0", "t1", "t2", "t3"]
    root = adapter_dirs(names[0]).parent
    for n in names[1:]:
        adapter_dirs(n)
    workers = [base_url(w) for w in start_workers(3, extra_args=WORKER_ARGS)]
    placement = {"defaults": {"per_replica_rps": 4.0, "per_replica_concurrent": None}}
    config = router_config(root, names, placement=placement)
    routers = [start_router(config, workers=workers, router_id=f"r{i}") for i in range(2)]

    async def one_leader() -> list[dict[str, Any]] | None:
        statuses = [await get_json(http, r.url + "/v1/router/status") for r in routers]
        leaders = {s["leader"] for s in statuses}
        epochs = {s["placement_epoch"] for s in statuses}
        if sum(s["is_leader"] for s in statuses) == 1 and len(leaders) == 1 and len(epochs) == 1:
            return statuses
        return None

    statuses = await until(one_leader, 15, "one leader and one placement on both routers")
    leader = next(i for i, s in enumerate(statuses) if s["is_leader"])
    follower = routers[1 - leader]
    views = [await _lora(http, r.url, "t0") for r in routers]
    assert views[0]["replica_set"] == views[1]["replica_set"]
    for r in routers:
        for name in names:
            body = {"model": name, "prompt": "x", "max_tokens": 2, "ignore_eos": True}
            async with http.post(r.url + "/v1/completions", json=body) as resp:
                assert resp.status == 200
                worker = resp.headers["x-lora-router-worker"]
            urls = {w["id"]: w["url"] for w in statuses[0]["workers"]}
            assert name in await held(http, urls[worker])

    routers[leader].proc.kill()

    async def took_over() -> bool:
        status = await get_json(http, follower.url + "/v1/router/status")
        return status["is_leader"] and status["leader"] == f"r{1 - leader}"

    await until(took_over, config["control"]["lease_ttl_s"] + 3, "the follower to take over")
    traffic = Traffic(http, follower.url, "t1", rps=12.0).start()
    try:
        await until(lambda: _at_least(http, follower.url, "t1", 3), 15, "the new leader to scale t1 up")
    finally:
        await traffic.stop()
    assert not traffic.errors, traffic.errors[:5]


async def _at_least(http: aiohttp.ClientSession, router: str, name: str, n: int) -> bool:
    view = await _lora(http, router, name)
    return len(view["replica_set"]) >= n and len(view["holders"]) >= n


async def test_a_config_change_applies_without_restart(
        http: aiohttp.ClientSession, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    root = adapter_dirs("cfg").parent
    workers = [base_url(w) for w in start_workers(3, extra_args=WORKER_ARGS)]
    config = router_config(root, ["cfg"])
    router = start_router(config, workers=workers)
    await until(lambda: _one_of(http, router.url, "cfg", 1), 15, "one replica of 'cfg'")
    version = (await get_json(http, router.url + "/v1/router/status"))["config_version"]

    traffic = Traffic(http, router.url, "cfg", rps=5.0).start()
    try:
        config["placement"] = {"adapters": {"cfg": {"min_replicas": 3}}}
        router.config_path.write_text(json.dumps(config))
        await until(lambda: _one_of(http, router.url, "cfg", 3), 15, "three replicas after the reload")
        config["placement"] = {"adapters": {"cfg": {"min_replicas": 2, "scale_down_cooldown_s": 0}}}
        router.config_path.write_text(json.dumps(config))
        await until(lambda: _one_of(http, router.url, "cfg", 2), 15, "two replicas after the second reload")
    finally:
        await traffic.stop()
    assert not traffic.errors, traffic.errors[:5]
    assert (await get_json(http, router.url + "/v1/router/status"))["config_version"] != version
