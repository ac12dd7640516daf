"""One routing policy: the proxy and the simulator both call router.core.routing.decide, and the core
keeps its boundaries (no aiohttp, discovery or bench inside it)."""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import msgspec
import numpy as np
import pytest
from inprocess import in_process_router

from bench.sim.scenarios import SCENARIOS, Setup, Shape, names, run_strategy
from bench.workloads import Lengths
from router.config import load_config
from router.core import routing
from router.core.events import CatalogChanged, MembershipChanged
from router.core.fleetstate import FleetState
from router.core.names import Target
from router.core.records import AdapterRecord, WorkerRecord
from router.core.retrybudget import RetryBudget
from router.core.routing import Attempts, Decision, Refusal, Reject

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import import_graph


def _refuse(target: Target, state: FleetState, tried: Attempts, budget: RetryBudget,
            rng: random.Random, prompt: Sequence[int] = ()) -> Decision:
    return Reject(Refusal.NO_WORKER, "the patched policy says no")


async def test_patching_decide_changes_the_proxy_and_the_simulator_alike(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shape = Shape(workers=3, adapters=5, max_loras=2, requests=50, rps_per_worker=2.0)
    requests = SCENARIOS["zipf"](np.random.default_rng(1), shape, Lengths())
    setup = Setup(workers=3, max_loras=2, tick_s=1.0)
    metrics, _ = run_strategy("lora-router", requests, names(5), setup, 1)
    assert metrics.requests == 50, "unpatched, the simulated router serves every request"

    config = tmp_path / "router.yaml"
    config.write_bytes(msgspec.json.encode({"base_model": "base"}))
    async with aiohttp.ClientSession() as session, in_process_router(load_config(config), session) as (url, state):
        state.apply(MembershipChanged({"w0": WorkerRecord(id="w0", url="http://127.0.0.1:9",
                                                             base_models=("base",))}))
        state.apply(CatalogChanged({"a0": AdapterRecord(name="a0", source="/m/a0", base_model="base")}))
        monkeypatch.setattr(routing, "decide", _refuse)
        with pytest.raises(RuntimeError, match="the patched policy says no"):
            run_strategy("lora-router", requests, names(5), setup, 1)
        reply = await session.post(url + "/v1/completions", json={"model": "a0", "prompt": "x"})
        body = await reply.json()
    assert reply.status == 503 and body["error"]["message"] == "the patched policy says no"


def test_the_core_imports_nothing_from_the_edges_and_the_simulator_imports_the_core() -> None:
    edges = import_graph.graph()
    assert import_graph.violations(edges) == []
    assert any(t.startswith("router.core") for t in edges["bench.sim.strategies"])


def test_the_boundary_check_can_fail() -> None:
    edges = import_graph.graph()
    edges["router.core.routing"] = {*edges["router.core.routing"], "aiohttp.web", "router.proxy"}
    edges["bench.sim.strategies"] = set()
    assert import_graph.violations(edges) == [
        "router.core.routing imports aiohttp.web", "router.core.routing imports router.proxy",
        "bench.sim does not import router.core"]
