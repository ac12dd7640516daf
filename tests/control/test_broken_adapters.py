"""Broken adapters through a real router (issue 14 #4): a path with no adapter, an adapter every worker
refuses, files that appear after registration, deletes that would break an alias or come back, tenant
ownership, and lora_int_id on unload. Real etcd, router and simulated workers as processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from control_helpers import WORKER_ARGS, get_json, router_config, until

from bench.promtext import metric_sum
from router.localfleet import base_url, make_adapter_dir

GHOST_404 = {"message": "Loading lora ghost failed: No adapter found for <path>", "type": "NotFoundError",
             "param": None, "code": 404}


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any],
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=headers) as r:
        raw = await r.read()
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw.decode()


async def test_a_path_with_no_adapter_is_refused_at_registration_with_vllms_404(
        http: aiohttp.ClientSession, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    """It answered `200 Success` and every later request tried loads on every worker."""
    root = adapter_dirs("real").parent
    workers = [base_url(w) for w in start_workers(1, extra_args=WORKER_ARGS)]
    router = start_router(router_config(root), workers=workers).url
    status, body = await _post(http, router + "/v1/load_lora_adapter",
                               {"lora_name": "ghost", "lora_path": str(root / "ghost")})
    assert (status, body) == (404, {"error": GHOST_404}), "vLLM's own answer for a path with no adapter"
    direct = await _post(http, workers[0] + "/v1/load_lora_adapter",
                         {"lora_name": "ghost", "lora_path": str(root / "ghost")})
    assert direct == (404, {"error": GHOST_404}), "the same answer a worker gives"
    status, body = await _post(http, router + "/v1/loras",
                               {"lora_name": "ghost", "source": {"uri": str(root / "ghost")}})
    assert (status, body) == (404, {"error": GHOST_404})
    async with http.get(router + "/v1/loras/ghost") as r:
        assert r.status == 404, "nothing was written"
    status, _ = await _post(http, router + "/v1/load_lora_adapter",
                            {"lora_name": "real", "lora_path": str(root / "real")})
    assert status == 200


def _late_fleet(tmp_path: Path, start_workers: Callable, start_router: Callable, adapter_dirs: Callable
                ) -> tuple[str, list[str], Path]:
    """A router whose second allowed prefix does not exist yet: it cannot see what will be there, so only
    the workers can judge a path under it."""
    root = adapter_dirs("real").parent
    late = tmp_path / "late-volume"
    workers = [base_url(w) for w in start_workers(2, extra_args=WORKER_ARGS)]
    config = router_config(root)
    config["security"]["allowed_path_prefixes"].append(str(late))
    return start_router(config, workers=workers).url, workers, late


async def _marked(http: aiohttp.ClientSession, router: str, name: str) -> dict[str, Any] | None:
    view = await get_json(http, router + f"/v1/loras/{name}")
    return view if view.get("failed") and view["replica_set"] else None


async def test_an_adapter_every_worker_refuses_is_marked_failed_and_fails_at_once(
        http: aiohttp.ClientSession, tmp_path: Path, etcd: Any, start_workers: Callable,
        start_router: Callable, adapter_dirs: Callable) -> None:
    """Every request for it tried loads on every worker and waited ~10 s for a 503 (the SDK: ~30 s, 9 loads)."""
    router, _, late = _late_fleet(tmp_path, start_workers, start_router, adapter_dirs)
    status, _ = await _post(http, router + "/v1/load_lora_adapter",
                            {"lora_name": "gone", "lora_path": str(late / "gone")})
    assert status == 200, "the router cannot see the path: the workers judge it"

    view = await until(lambda: _marked(http, router, "gone"), 20, "'gone' marked failed")
    failed = view["failed"]
    assert failed["reason"] == "not_found" and "No adapter found" in failed["detail"]
    assert failed["workers"] == sorted(view["replica_set"]) and not view["holders"]

    async def flagged() -> bool:
        async with http.get(router + "/metrics") as r:
            return metric_sum(await r.text(), "lora_router_adapter_failed", 'adapter="gone"') == 1.0

    await until(flagged, 5, "lora_router_adapter_failed{adapter=gone} 1")

    argv = [sys.executable, "-m", "router", "status", "--etcd", etcd.endpoint, "--json"]
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["adapters"]["gone"]["failed"]["reason"] == "not_found"
    human = await asyncio.to_thread(subprocess.run, argv[:-1], capture_output=True, text=True, timeout=30)
    assert "FAILED (not_found)" in human.stdout, human.stdout

    started = time.monotonic()
    status, body = await _post(http, router + "/v1/completions", {"model": "gone", "prompt": "x", "max_tokens": 2})
    elapsed = time.monotonic() - started
    assert status == 503 and elapsed < 1.0, (status, elapsed, body)
    error = body["error"]
    assert error["type"] == "ServiceUnavailableError" and error["param"] == "model"
    assert "'gone'" in error["message"] and "not_found" in error["message"]
    assert str(late) not in error["message"], "the server path is not shown to clients"
    async with http.get(router + "/metrics") as r:
        metrics = await r.text()
    assert metric_sum(metrics, "lora_router_cold_starts_total", 'adapter="gone"') == 0.0, \
        "no load was tried for the request"


async def test_files_that_appear_after_registration_are_loaded_without_anyone_asking(
        http: aiohttp.ClientSession, tmp_path: Path, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    """A 404 load was never retried: files that arrived 2 s late stayed unloaded, min_replicas unmet."""
    router, _, late = _late_fleet(tmp_path, start_workers, start_router, adapter_dirs)
    status, _ = await _post(http, router + "/v1/load_lora_adapter",
                            {"lora_name": "slow", "lora_path": str(late / "slow")})
    assert status == 200
    arrival = threading.Timer(2.0, make_adapter_dir, (late, "slow"))
    arrival.start()
    try:
        async def served() -> dict[str, Any] | None:
            view = await get_json(http, router + "/v1/loras/slow")
            return view if view["holders"] and not view.get("failed") else None

        # Only the admin view is polled: a request would cold-start the adapter itself.
        view = await until(served, 40, "the reconciler to load 'slow' once its files exist", interval_s=0.2)
    finally:
        arrival.cancel()
    assert set(view["holders"]) == set(view["replica_set"])
    status, body = await _post(http, router + "/v1/completions", {"model": "slow", "prompt": "x", "max_tokens": 2})
    assert status == 200 and body["model"] == "slow", body


async def test_deleting_an_alias_variant_or_a_config_adapter_is_refused_with_409(
        http: aiohttp.ClientSession, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    """Deleting a variant broke the alias (404 for `support` while /v1/models listed it); a config adapter
    deleted through the API came back at the next start."""
    for name in ("v1", "v2", "declared", "api-one"):
        root = adapter_dirs(name).parent
    workers = [base_url(w) for w in start_workers(1, extra_args=WORKER_ARGS)]
    config = router_config(root, ["declared"], aliases={"support": {"v1": 90, "v2": 10}})
    router = start_router(config, workers=workers).url
    for name in ("v1", "v2", "api-one"):
        assert (await _post(http, router + "/v1/load_lora_adapter",
                            {"lora_name": name, "lora_path": str(root / name)}))[0] == 200
    async with http.delete(router + "/v1/loras/v2") as r:
        assert r.status == 409
        error = (await r.json())["error"]
    assert error["type"] == "ConflictError" and "alias 'support'" in error["message"]
    status, body = await _post(http, router + "/v1/unload_lora_adapter", {"lora_name": "v1"})
    assert status == 409 and "alias 'support'" in body["error"]["message"]
    async with http.delete(router + "/v1/loras/declared") as r:
        assert r.status == 409 and "config" in (await r.json())["error"]["message"]
    for user in ("a", "b", "c", "d", "e", "f"):
        status, body = await _post(http, router + "/v1/completions",
                                   {"model": "support", "prompt": "x", "max_tokens": 1, "user": user})
        assert status == 200, body
    async with http.delete(router + "/v1/loras/api-one") as r:
        assert r.status == 200, "an adapter in no alias and not in the config is deleted"
    catalog = {a["name"] for a in (await get_json(http, router + "/v1/loras"))["data"]}
    assert catalog == {"v1", "v2", "declared"}


async def test_unload_with_a_lora_int_id_is_refused_like_vllm_refuses_a_mismatch(
        http: aiohttp.ClientSession, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    """`lora_int_id` was ignored by the router's unload and the simulated worker's (seed 002)."""
    root = adapter_dirs("a").parent
    adapter_dirs("b")
    workers = [base_url(w) for w in start_workers(1, extra_args=WORKER_ARGS)]
    worker = workers[0]
    for name in ("a", "b"):
        assert (await _post(http, worker + "/v1/load_lora_adapter",
                            {"lora_name": name, "lora_path": str(root / name)}))[0] == 200
    status, body = await _post(http, worker + "/v1/unload_lora_adapter", {"lora_name": "a", "lora_int_id": 2})
    assert status == 400 and body["error"]["param"] == "lora_int_id", body
    assert body["error"]["message"] == "The requested lora_int_id 2 does not match loaded adapter 'a' with id 1."
    assert (await _post(http, worker + "/v1/unload_lora_adapter", {"lora_name": "a", "lora_int_id": 1}))[0] == 200
    assert (await _post(http, worker + "/v1/unload_lora_adapter", {"lora_name": "b", "lora_int_id": None}))[0] == 200

    router = start_router(router_config(root), workers=workers).url
    assert (await _post(http, router + "/v1/load_lora_adapter",
                        {"lora_name": "a", "lora_path": str(root / "a")}))[0] == 200
    status, body = await _post(http, router + "/v1/unload_lora_adapter", {"lora_name": "a", "lora_int_id": 7})
    assert status == 400 and body["error"]["param"] == "lora_int_id", body
    assert "a" in {x["name"] for x in (await get_json(http, router + "/v1/loras"))["data"]}, "nothing removed"
    status, body = await _post(http, router + "/v1/unload_lora_adapter", {"lora_name": "a"})
    assert status == 200, body


async def test_a_tenant_uses_the_adapters_it_owns_and_config_check_refuses_a_default_it_cannot_use(
        http: aiohttp.ClientSession, tmp_path: Path, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    """`tenant` on a catalog entry granted nothing (unusable unless the name matched the tenant's patterns),
    and `config check` accepted a default_adapter outside the tenant's patterns."""
    root = adapter_dirs("team-sql").parent
    adapter_dirs("acme-chat")
    keys = {}
    for tenant in ("acme", "globex"):
        keys[tenant] = f"key-{tenant}-0123456789"
        (tmp_path / f"{tenant}.keys").write_text(keys[tenant] + "\n")
    tenants = {t: {"keys_file": str(tmp_path / f"{t}.keys"), "adapters": [f"{t}-*"]} for t in keys}
    config = router_config(root, tenants=tenants)
    config["adapters"] = [{"name": "team-sql", "source": str(root / "team-sql"), "base_model": "sim-base",
                           "tenant": "acme"},
                          {"name": "acme-chat", "source": str(root / "acme-chat"), "base_model": "sim-base"}]
    workers = [base_url(w) for w in start_workers(1, extra_args=WORKER_ARGS)]
    router = start_router(config, workers=workers).url

    def auth(tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys[tenant]}"}

    body = {"model": "team-sql", "prompt": "x", "max_tokens": 1}
    status, reply = await _post(http, router + "/v1/completions", body, auth("acme"))
    assert status == 200, f"acme owns team-sql: {reply}"
    assert "team-sql" in {m["id"] for m in (await get_json(http, router + "/v1/models", auth("acme")))["data"]}
    status, reply = await _post(http, router + "/v1/completions", body, auth("globex"))
    assert status == 404 and reply["error"]["type"] == "NotFoundError", "another tenant's adapter stays absent"

    def check(tenant_config: dict[str, Any], adapters: list[dict[str, Any]]) -> subprocess.CompletedProcess:
        path = tmp_path / "check.yaml"
        path.write_text(json.dumps({**config, "tenants": {**tenants, "globex": {**tenants["globex"], **tenant_config}},
                                    "adapters": adapters}))
        return subprocess.run([sys.executable, "-m", "router", "config", "check", str(path)], check=False,
                              capture_output=True, text=True, timeout=30)

    outside = check({"default_adapter": "acme-chat"}, config["adapters"])
    assert outside.returncode == 1 and "tenants.globex.default_adapter" in outside.stderr, outside
    assert "matches none of tenants.globex.adapters" in outside.stderr
    foreign = check({"default_adapter": "team-sql"}, config["adapters"])
    assert foreign.returncode == 1 and "belongs to tenant 'acme'" in foreign.stderr, foreign
    owned = [*config["adapters"], {"name": "house", "source": str(root / "team-sql"), "base_model": "sim-base",
                                   "tenant": "globex"}]
    assert check({"default_adapter": "house"}, owned).returncode == 0, "an adapter globex owns is its to use"
    assert check({"default_adapter": "globex-chat"}, config["adapters"]).returncode == 0


async def test_an_adapter_for_a_base_model_no_worker_serves_says_so(
        http: aiohttp.ClientSession, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    """It answered "No worker could load adapter", which sends an operator to look at the adapter."""
    root = adapter_dirs("elsewhere").parent
    workers = [base_url(w) for w in start_workers(1, extra_args=WORKER_ARGS)]
    router = start_router(router_config(root), workers=workers).url
    status, _ = await _post(http, router + "/v1/loras", {"lora_name": "elsewhere", "base_model": "other-base",
                                                         "source": {"uri": str(root / "elsewhere")}})
    assert status == 201
    status, body = await _post(http, router + "/v1/completions", {"model": "elsewhere", "prompt": "x"})
    assert status == 503, body
    assert body["error"]["message"] == "No worker serves base model 'other-base', which adapter 'elsewhere' is for."
