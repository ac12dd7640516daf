"""The admin API: the adapter catalog, fleet-wide, in vLLM's shape and as REST; and the router's status.

Wiring in server.py:
`build_app(proxy, ..., extra_routes=lambda app: add_admin_routes(app, catalog, live, state, demand=demand,
router_id=router_id, election=election, reconciler=reconciler, control=control))`.

vLLM's own `POST /v1/load_lora_adapter` / `/v1/unload_lora_adapter` keep their
bodies and answers (plain-text success, InvalidUserInput 400 for a name already
loaded, 404 for an unknown one) but act on the catalog: the placement then
loads the adapter on its replica set, or every holder drains and unloads it.
Every route needs an admin key when keys are configured; every write is
validated first (router.catalog_sync.make_record), so a 400 writes nothing; a
local path the router can see holds an adapter or gets vLLM's 404 (nothing written).

Deletes (DELETE /v1/loras/{name}, unload_lora_adapter) are refused with 409
for an adapter that is a variant of an alias (requests for the alias that
picked it would fail) or that the config's `adapters:` declares (it would be
written back at the next start or config reload of any router): change the
config instead. The catalog does not number adapters, so an unload that gives
a `lora_int_id` cannot be checked and is refused (vLLM refuses a mismatch).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from aiohttp import web

from discovery.election import LeaderElection
from discovery.errors import EtcdUnavailable
from discovery.stores import CatalogStore
from router.bodies import read_body
from router.catalog_sync import make_record, require_adapter_files
from router.config import RouterConfig
from router.control import ControlLoop
from router.core.events import AdapterDeleted, AdapterWritten
from router.core.fleetstate import FleetState
from router.core.reconcile_plan import Failure
from router.core.records import AdapterFailure, AdapterRecord
from router.demand import DemandCounter
from router.errors import NOT_JSON, BadRequest, NotFound, RouterError
from router.live import LiveConfig
from router.reconciler import Reconciler
from router.validation import NAME_MAX


class AdapterExists(BadRequest):
    """vLLM's answer to loading a name it already has: same status, type and message."""

    type = "InvalidUserInput"


class AdapterConflict(RouterError):
    status = 409
    type = "ConflictError"


class CatalogUnavailable(RouterError):
    """etcd did not answer a catalog read or write; nothing is known to have changed."""

    status = 503
    type = "ServiceUnavailableError"


@contextmanager
def _catalog_call(what: str) -> Iterator[None]:
    try:
        yield
    except EtcdUnavailable as exc:
        raise CatalogUnavailable(f"The adapter catalog is unavailable ({what}); retry shortly.",
                                 headers={"Retry-After": "1"}) from exc


class LoadLoraRequest(msgspec.Struct):
    lora_name: str
    lora_path: str
    load_inplace: bool = False
    base_model: str | None = None
    rank: int | None = None
    tenant: str | None = None


class UnloadLoraRequest(msgspec.Struct):
    lora_name: str
    lora_int_id: int | None = None


class Source(msgspec.Struct):
    uri: str


class CreateLoraRequest(msgspec.Struct):
    lora_name: str
    source: Source
    base_model: str | None = None
    rank: int | None = None
    tenant: str | None = None


class LoraView(msgspec.Struct):
    name: str
    source: str
    base_model: str
    rank: int
    tenant: str | None
    replicas: int
    """Replicas the placement asks for (0 = not placed yet)."""
    replica_set: list[str]
    holders: list[str]
    draining: list[str]
    demand_rps: float
    """Smoothed requests/s for it through this router (the placement in etcd carries no demand)."""
    inflight: int
    """Requests for it in flight through this router."""
    failures: dict[str, Failure] = {}
    """worker id -> why loading (or unloading) it there failed; filled for one adapter, not in lists."""
    failed: AdapterFailure | None = None
    """Set while the adapter is marked failed: every worker placed for it refused it; requests fail at once."""
    object: str = "lora"


class LoraList(msgspec.Struct):
    data: list[LoraView]
    object: str = "list"


class WorkerStatus(msgspec.Struct):
    id: str
    url: str
    healthy: bool
    instance: str
    base_models: list[str]
    inflight: int
    holds: list[str]
    draining: list[str]
    error: str | None


class RouterStatus(msgspec.Struct):
    router_id: str
    leader: str | None
    is_leader: bool
    config_version: str
    placement_epoch: int
    placement_computed_at: float
    ticks: int
    last_tick_at: float | None
    adapters: int
    unplaced: list[str]
    workers: list[WorkerStatus]


def add_admin_routes(app: web.Application, catalog: CatalogStore, live: LiveConfig, state: FleetState, *,
                     demand: DemandCounter, router_id: str, election: LeaderElection | None = None,
                     reconciler: Reconciler | None = None, control: ControlLoop | None = None) -> None:
    admin = _Admin(catalog, live, state, demand, router_id, election, reconciler, control)
    app.router.add_post("/v1/load_lora_adapter", admin.load_lora_adapter)
    app.router.add_post("/v1/unload_lora_adapter", admin.unload_lora_adapter)
    app.router.add_get("/v1/loras", admin.list_loras)
    app.router.add_post("/v1/loras", admin.create_lora)
    app.router.add_get("/v1/loras/{name}", admin.get_lora)
    app.router.add_delete("/v1/loras/{name}", admin.delete_lora)
    app.router.add_get("/v1/router/status", admin.status)


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(value), content_type="application/json")


async def _body(request: web.Request, type_: type[Any], config: RouterConfig) -> Any:
    """Decode an admin body; a bad one is vLLM's 400 with the offending field as `param`."""
    raw = await read_body(request, config.security.max_body_bytes, config.timeouts.client_body_s)
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        text = str(exc)
        param = text.rsplit("`$.", 1)[1].rstrip("`") if "`$." in text else None
        if param is None and "missing required field" in text:
            param = text.split("`")[1] if "`" in text else None
        raise BadRequest(f"Invalid request body: {text}", param=f"body.{param}" if param else None) from None
    except NOT_JSON as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None


class _Admin:
    def __init__(self, catalog: CatalogStore, live: LiveConfig, state: FleetState, demand: DemandCounter,
                 router_id: str, election: LeaderElection | None, reconciler: Reconciler | None,
                 control: ControlLoop | None) -> None:
        self._catalog = catalog
        self._live = live
        self._state = state
        self._demand = demand
        self._router_id = router_id
        self._election = election
        self._reconciler = reconciler
        self._control = control

    def _authorize(self, request: web.Request) -> None:
        self._live.auth.require_admin(request.headers.get("Authorization"))

    async def _lookup(self, name: str) -> AdapterRecord | None:
        """The fleet's view first; etcd for what this router's watch has not delivered yet.

        A name longer than any valid one cannot be in the catalog; asking etcd for it
        would fail on etcd's request size limit and answer a 503 to a client error.
        """
        record = self._state.catalog.get(name)
        if record is None and len(name) <= NAME_MAX:
            with _catalog_call("reading"):
                record = await self._catalog.get(name)
        return record

    async def _write(self, record: AdapterRecord) -> None:
        with _catalog_call("writing"):
            written = await self._catalog.put(record)
        self._state.apply(AdapterWritten(written))

    async def _remove(self, name: str, lora_int_id: int | None = None) -> bool:
        """Drop `name` from the catalog; False if it was not there; 400/409 if it must not go (see above)."""
        if await self._lookup(name) is None:
            return False
        if lora_int_id is not None:
            raise BadRequest(f"The router's catalog does not number adapters, so lora_int_id {lora_int_id} cannot "
                             f"be checked against adapter '{name}'; send lora_name alone.", param="lora_int_id")
        config = self._live.config
        for alias, variants in sorted(config.aliases.items()):
            if name in variants:
                raise AdapterConflict(f"Adapter '{name}' is a variant of alias '{alias}' (aliases.{alias} in the "
                                      "router's config); take it out of the alias first.", param="lora_name")
        if any(entry.name == name for entry in config.adapters):
            raise AdapterConflict(f"Adapter '{name}' is declared in the router's config (adapters:), which writes it "
                                  "back at every start and reload; remove it there.", param="lora_name")
        with _catalog_call("deleting"):
            await self._catalog.delete(name)
        self._state.apply(AdapterDeleted(name))
        return True

    # -- vLLM-compatible --------------------------------------------------------------------
    async def load_lora_adapter(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body: LoadLoraRequest = await _body(request, LoadLoraRequest, self._live.config)
        record = make_record(self._live.config, self._state.bases(), body.lora_name, body.lora_path,
                             base_model=body.base_model,
                             rank=body.rank, tenant=body.tenant)
        if not body.load_inplace and await self._lookup(record.name) is not None:
            raise AdapterExists(f"The lora adapter '{record.name}' has already been loaded. If you want to load "
                                "the adapter in place, set 'load_inplace' to True.")
        require_adapter_files(record, self._live.config.security)
        await self._write(record)
        return web.Response(text=f"Success: LoRA adapter '{record.name}' added successfully.",
                            content_type="text/plain")

    async def unload_lora_adapter(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body: UnloadLoraRequest = await _body(request, UnloadLoraRequest, self._live.config)
        if not await self._remove(body.lora_name, body.lora_int_id):
            raise NotFound(f"The lora adapter '{body.lora_name}' cannot be found.")
        return web.Response(text=f"Success: LoRA adapter '{body.lora_name}' removed successfully.",
                            content_type="text/plain")

    # -- REST -------------------------------------------------------------------------------
    async def list_loras(self, request: web.Request) -> web.Response:
        self._authorize(request)
        catalog = self._state.catalog
        draining = self._draining()
        return _json(LoraList(data=[self._view(catalog[n], draining, detail=False) for n in sorted(catalog)]))

    async def create_lora(self, request: web.Request) -> web.Response:
        self._authorize(request)
        body: CreateLoraRequest = await _body(request, CreateLoraRequest, self._live.config)
        record = make_record(self._live.config, self._state.bases(), body.lora_name, body.source.uri,
                             base_model=body.base_model,
                             rank=body.rank, tenant=body.tenant, source_param="source.uri")
        if await self._lookup(record.name) is not None:
            raise AdapterConflict(f"Adapter '{record.name}' is already in the catalog.", param="lora_name")
        require_adapter_files(record, self._live.config.security)
        await self._write(record)
        return _json(self._view(record, self._draining(), detail=True), status=201)

    async def get_lora(self, request: web.Request) -> web.Response:
        self._authorize(request)
        name = request.match_info["name"]
        record = await self._lookup(name)
        if record is None:
            raise NotFound(f"The lora adapter '{name}' cannot be found.")
        return _json(self._view(record, self._draining(), detail=True))

    async def delete_lora(self, request: web.Request) -> web.Response:
        self._authorize(request)
        name = request.match_info["name"]
        if not await self._remove(name):
            raise NotFound(f"The lora adapter '{name}' cannot be found.")
        return _json({"id": name, "object": "lora", "deleted": True})

    async def status(self, request: web.Request) -> web.Response:
        self._authorize(request)
        state, election = self._state, self._election
        errors = self._reconciler.worker_errors() if self._reconciler else {}
        workers = [WorkerStatus(id=v.id, url=v.url, healthy=v.healthy, instance=v.record.instance,
                                base_models=sorted(v.record.base_models), inflight=v.inflight,
                                holds=sorted(v.holds), draining=sorted(v.draining), error=errors.get(v.id))
                   for v in sorted(state.workers.values(), key=lambda v: v.id)]
        placement = state.placement
        return _json(RouterStatus(
            router_id=self._router_id, leader=election.leader_id if election else None,
            is_leader=election is not None and election.is_leader,
            config_version=self._live.loaded.version, placement_epoch=placement.epoch,
            placement_computed_at=placement.computed_at,
            ticks=self._control.ticks if self._control else 0,
            last_tick_at=self._control.last_tick_at if self._control else None,
            adapters=len(state.catalog), unplaced=list(placement.unplaced), workers=workers))

    def _draining(self) -> dict[str, list[str]]:
        """adapter -> workers draining it, built once per answer rather than once per adapter."""
        index: dict[str, list[str]] = {}
        for view in sorted(self._state.workers.values(), key=lambda v: v.id):
            for name in view.draining:
                index.setdefault(name, []).append(view.id)
        return index

    def _view(self, record: AdapterRecord, draining: dict[str, list[str]], *, detail: bool) -> LoraView:
        state = self._state
        replica_set = state.placement.replica_sets.get(record.name)
        estimates = self._control.estimates if self._control else {}
        failures = {}
        if detail and self._reconciler is not None:
            failures = dict(sorted(self._reconciler.failures(record.name).items()))
        return LoraView(
            name=record.name, source=record.source, base_model=record.base_model, rank=record.rank,
            tenant=record.tenant, replicas=replica_set.replicas if replica_set else 0,
            replica_set=list(replica_set.workers) if replica_set else [],
            holders=sorted(state.holders(record.name)),
            draining=draining.get(record.name, []),
            demand_rps=estimates[record.name].rps if record.name in estimates else 0.0,
            inflight=self._demand.inflight.get(record.name, 0), failures=failures, failed=record.failed)
