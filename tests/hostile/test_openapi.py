"""router/openapi.json: a valid OpenAPI document that lists exactly the routes the router registers."""

from __future__ import annotations

import json

import aiohttp
import schemathesis
from hostile_helpers import OPENAPI_PATH, assert_openai_error, send
from inprocess import in_process_app
from openapi_spec_validator import validate
from schemathesis.core.result import Ok

from discovery.embedded import EmbeddedEtcd
from discovery.etcd import EtcdClient
from discovery.stores import CatalogStore
from router.config import load_config
from router.front import INFERENCE_ROUTES

METHODS = {"get", "post", "put", "patch", "delete", "head", "options"}


def _document() -> dict:
    return json.loads(OPENAPI_PATH.read_text())


def _documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in _document()["paths"].items() for method in item
            if method in METHODS}


def test_the_document_is_valid_openapi() -> None:
    validate(_document())
    schema = schemathesis.openapi.from_path(str(OPENAPI_PATH))
    results = list(schema.get_all_operations())
    failed = [r for r in results if not isinstance(r, Ok)]
    assert not failed, failed
    assert {(r.ok().method.upper(), r.ok().path) for r in results} == _documented()


def test_every_error_answer_uses_the_openai_error_schema() -> None:
    """Except /ready's 503, a probe's plain-text answer rather than an API error."""
    paths = {p: item for p, item in _document()["paths"].items() if p != "/ready"}
    for path, item in paths.items():
        for method, operation in ((m, o) for m, o in item.items() if m in METHODS):
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) or status == "default":
                    schema = response.get("content", {}).get("application/json", {}).get("schema")
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)


async def test_every_registered_route_is_documented(etcd: EmbeddedEtcd) -> None:
    """The routes as `serve` builds them: the front's and the app's behind it (aiohttp's automatic HEAD
    twin of each GET is not a route of ours)."""
    client = await EtcdClient.connect([etcd.endpoint])
    try:
        async with aiohttp.ClientSession() as session:
            app, _, _ = in_process_app(load_config(None), session, CatalogStore(client))
            registered = {(route.method, route.resource.canonical) for route in app.router.routes()
                          if route.method != "HEAD" and route.resource is not None}
            registered |= {("POST", path) for path in INFERENCE_ROUTES}  # the front's own (router.front)
    finally:
        await client.close()
    assert registered - _documented() == set(), "routes missing from router/openapi.json"
    assert _documented() - registered == set(), "router/openapi.json documents routes the router lacks"


def test_the_router_serves_the_document_without_a_key(hostile_router) -> None:
    env = hostile_router()
    status, headers, body = send(env.port, "GET", "/openapi.json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert body == OPENAPI_PATH.read_bytes()
    status, _, body = send(env.port, "POST", "/openapi.json", b"{}")
    assert_openai_error(status, body, 405)
