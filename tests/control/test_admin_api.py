"""The admin API end to end: vLLM-compatible load/unload and REST, fleet-wide through the catalog,
with every bad name or source refused with a 400 and nothing written. Real etcd, router and workers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
from control_helpers import BASE, WORKER_ARGS, get_json, held, router_config, until

from router.localfleet import base_url


async def _catalog(http: aiohttp.ClientSession, router: str, headers: dict[str, str] | None = None) -> set[str]:
    return {a["name"] for a in (await get_json(http, router + "/v1/loras", headers))["data"]}


async def test_vllm_compatible_load_and_unload_act_on_the_whole_fleet(
        http: aiohttp.ClientSession, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable) -> None:
    path = adapter_dirs("sql-lora")
    workers = [base_url(w) for w in start_workers(2, extra_args=WORKER_ARGS)]
    router = start_router(router_config(path.parent), workers=workers).url

    async with http.post(router + "/v1/load_lora_adapter",
                         json={"lora_name": "sql-lora", "lora_path": str(path)}) as r:
        assert r.status == 200
        assert await r.text() == "Success: LoRA adapter 'sql-lora' added successfully."
    async with http.post(router + "/v1/load_lora_adapter",
                         json={"lora_name": "sql-lora", "lora_path": str(path)}) as r:
        assert r.status == 400
        assert (await r.json())["error"] == {
            "message": "The lora adapter 'sql-lora' has already been loaded. If you want to load the adapter "
                       "in place, set 'load_inplace' to True.",
            "type": "InvalidUserInput", "param": None, "code": 400}

    async def placed() -> dict | None:
        view = await get_json(http, router + "/v1/loras/sql-lora")
        return view if view["holders"] and set(view["holders"]) == set(view["replica_set"]) else None

    view = await until(placed, 15, "the placement to load sql-lora")
    assert view["source"] == str(path.resolve()) and view["base_model"] == BASE and view["rank"] == 8
    status = await get_json(http, router + "/v1/router/status")
    urls = {w["id"]: w["url"] for w in status["workers"]}
    for worker_id in view["holders"]:
        assert "sql-lora" in await held(http, urls[worker_id])

    async with http.post(router + "/v1/unload_lora_adapter", json={"lora_name": "nope"}) as r:
        assert r.status == 404
        assert (await r.json())["error"]["message"] == "The lora adapter 'nope' cannot be found."
    async with http.post(router + "/v1/unload_lora_adapter", json={"lora_name": "sql-lora"}) as r:
        assert r.status == 200
        assert await r.text() == "Success: LoRA adapter 'sql-lora' removed successfully."

    async def unloaded_everywhere() -> bool:
        return all("sql-lora" not in h for h in [await held(http, u) for u in workers])

    await until(unloaded_everywhere, 15, "every holder to unload sql-lora")
    assert "sql-lora" not in await _catalog(http, router)


async def test_rest_catalog_create_get_delete(http: aiohttp.ClientSession, start_workers: Callable,
                                              start_router: Callable, adapter_dirs: Callable) -> None:
    path = adapter_dirs("rest-a", rank=16)
    workers = [base_url(w) for w in start_workers(1, extra_args=WORKER_ARGS)]
    router = start_router(router_config(path.parent), workers=workers).url
    async with http.post(router + "/v1/loras", json={"lora_name": "rest-a", "source": {"uri": f"file://{path}"}}) as r:
        assert r.status == 201, await r.text()
        created = await r.json()
    assert created["name"] == "rest-a" and created["rank"] == 16, "rank read from adapter_config.json"
    async with http.post(router + "/v1/loras", json={"lora_name": "rest-a", "source": {"uri": str(path)}}) as r:
        assert r.status == 409
    await until(lambda: _has_holder(http, router, "rest-a"), 15, "rest-a to be loaded")
    async with http.delete(router + "/v1/loras/rest-a") as r:
        assert r.status == 200
    async with http.delete(router + "/v1/loras/rest-a") as r:
        assert r.status == 404
    async with http.get(router + "/v1/loras/rest-a") as r:
        assert r.status == 404 and (await r.json())["error"]["type"] == "NotFoundError"


async def _has_holder(http: aiohttp.ClientSession, router: str, name: str) -> bool:
    return bool((await get_json(http, router + f"/v1/loras/{name}"))["holders"])


async def test_admin_routes_need_an_admin_key_when_keys_are_configured(
        http: aiohttp.ClientSession, start_workers: Callable, start_router: Callable, adapter_dirs: Callable,
        tmp_path: Path) -> None:
    path = adapter_dirs("keyed")
    (tmp_path / "admin.keys").write_text("the-admin-key\n")
    (tmp_path / "acme.keys").write_text("acme-key\n")
    workers = [base_url(w) for w in start_workers(1, extra_args=WORKER_ARGS)]
    config = router_config(path.parent, auth={"admin_keys_file": str(tmp_path / "admin.keys")},
                           tenants={"acme": {"keys_file": str(tmp_path / "acme.keys")}})
    router = start_router(config, workers=workers).url
    body = {"lora_name": "keyed", "lora_path": str(path)}
    for headers, status in [({}, 401), ({"Authorization": "Bearer wrong"}, 401),
                            ({"Authorization": "Bearer acme-key"}, 403)]:
        for method, route in [("POST", "/v1/load_lora_adapter"), ("GET", "/v1/loras"),
                              ("GET", "/v1/router/status"), ("DELETE", "/v1/loras/keyed")]:
            async with http.request(method, router + route, json=body, headers=headers) as r:
                assert r.status == status, (method, route, headers)
    admin = {"Authorization": "Bearer the-admin-key"}
    async with http.post(router + "/v1/load_lora_adapter", json=body, headers=admin) as r:
        assert r.status == 200
    assert "keyed" in await _catalog(http, router, admin)
