"""The admin API in-process over real HTTP and a real etcd: every bad name or source is a 400 and
leaves etcd's catalog untouched; an etcd outage is a 503 in OpenAI shape. No workers needed."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from control_helpers import BASE
from inprocess import in_process_router

from discovery.embedded import EmbeddedEtcd
from discovery.etcd import EtcdClient
from discovery.stores import CatalogStore
from router.config import load_config


class Admin:
    def __init__(self, url: str, catalog: CatalogStore, root: Path) -> None:
        self.url = url
        self.catalog = catalog
        self.root = root


@pytest.fixture
async def admin(etcd: EmbeddedEtcd, tmp_path: Path, adapter_dirs: Any) -> AsyncIterator[Admin]:
    root = adapter_dirs("good").parent
    config = {"base_model": BASE, "aliases": {"support": {"good": 1}},
              "security": {"allowed_path_prefixes": [str(root)]}}
    (tmp_path / "router.yaml").write_bytes(msgspec.json.encode(config))
    session = aiohttp.ClientSession()
    client = await EtcdClient.connect([etcd.endpoint], timeout_s=1.0)
    catalog = CatalogStore(client)
    try:
        async with in_process_router(load_config(tmp_path / "router.yaml"), session, catalog) as (url, _):
            yield Admin(url, catalog, root)
    finally:
        await client.close()
        await session.close()


async def test_bad_names_and_sources_are_400_and_write_nothing(admin: Admin, http: aiohttp.ClientSession,
                                                               tmp_path: Path) -> None:
    root, good = admin.root, admin.root / "good"
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "escape")
    bad = [
        ({"lora_name": "x1", "lora_path": f"{root}/../outside"}, "lora_path"),
        ({"lora_name": "x2", "lora_path": str(root / "escape")}, "lora_path"),
        ({"lora_name": "x3", "lora_path": "good"}, "lora_path"),
        ({"lora_name": "x4", "lora_path": "ftp://host/good"}, "lora_path"),
        ({"lora_name": "x5", "lora_path": "hf://org/repo"}, "lora_path"),
        ({"lora_name": "x6", "lora_path": "/etc"}, "lora_path"),
        ({"lora_name": BASE, "lora_path": str(good)}, "lora_name"),
        ({"lora_name": "support", "lora_path": str(good)}, "lora_name"),
        ({"lora_name": "../x", "lora_path": str(good)}, "lora_name"),
        ({"lora_name": "a@b", "lora_path": str(good)}, "lora_name"),
        ({"lora_name": "", "lora_path": str(good)}, "lora_name"),
    ]
    for body, param in bad:
        async with http.post(admin.url + "/v1/load_lora_adapter", json=body) as r:
            error = (await r.json())["error"]
            assert r.status == 400, (body, error)
            assert error["param"] == param and error["code"] == 400 and error["message"], body
        rest = {"lora_name": body["lora_name"], "source": {"uri": body["lora_path"]}}
        async with http.post(admin.url + "/v1/loras", json=rest) as r:
            assert r.status == 400, rest
            assert (await r.json())["error"]["param"] == ("source.uri" if param == "lora_path" else param)
    for raw in [b"{", b"[]", b'{"lora_name": "y"}', b'{"lora_name": 3, "lora_path": "/x"}',
                b'{"lora_name": "y", "lora_path": "/x", "rank": "high"}']:
        async with http.post(admin.url + "/v1/load_lora_adapter", data=raw) as r:
            assert r.status == 400 and "error" in await r.json(), raw
    async with http.post(admin.url + "/v1/load_lora_adapter", json={"lora_name": "y"}) as r:
        assert (await r.json())["error"]["param"] == "body.lora_path"
    assert await admin.catalog.list() == {}, "a rejected request wrote to the catalog"

    async with http.post(admin.url + "/v1/load_lora_adapter", json={"lora_name": "good", "lora_path": str(good)}) as r:
        assert r.status == 200
    stored = await admin.catalog.list()
    assert list(stored) == ["good"] and stored["good"].source == str(good.resolve())
    assert stored["good"].base_model == BASE


async def test_load_inplace_repoints_an_existing_adapter(admin: Admin, http: aiohttp.ClientSession,
                                                         adapter_dirs: Any) -> None:
    first, second = admin.root / "good", adapter_dirs("good-v2", rank=16)
    body = {"lora_name": "good", "lora_path": str(first)}
    async with http.post(admin.url + "/v1/load_lora_adapter", json=body) as r:
        assert r.status == 200
    async with http.post(admin.url + "/v1/load_lora_adapter", json={**body, "lora_path": str(second)}) as r:
        assert r.status == 400
    assert (await admin.catalog.get("good")).source == str(first.resolve())  # type: ignore[union-attr]
    async with http.post(admin.url + "/v1/load_lora_adapter",
                         json={**body, "lora_path": str(second), "load_inplace": True}) as r:
        assert r.status == 200
    record = await admin.catalog.get("good")
    assert record is not None and record.source == str(second.resolve()) and record.rank == 16


async def test_an_etcd_outage_is_a_503_in_openai_shape(admin: Admin, http: aiohttp.ClientSession,
                                                       etcd: EmbeddedEtcd) -> None:
    etcd.kill()
    async with http.post(admin.url + "/v1/loras",
                         json={"lora_name": "good", "source": {"uri": str(admin.root / "good")}}) as r:
        assert r.status == 503
        error = (await r.json())["error"]
        assert error["type"] == "ServiceUnavailableError" and error["code"] == 503
        assert r.headers["Retry-After"] == "1"
