"""Fixtures shared by every suite: a real etcd, real worker processes, adapter directories."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from discovery.embedded import EmbeddedEtcd
from router.localfleet import BASE_MODEL, LocalFleet, LocalRouter, make_adapter_dir
from router.procs import ManagedProcess
from router.waiting import wait_until


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers by place, so no test of these kinds can miss them: real vLLM is always slow, the chart always helm."""
    helm = Path(__file__).parent / "helm"
    for item in items:
        if item.get_closest_marker("real_vllm"):
            item.add_marker(pytest.mark.slow)
        if helm in item.path.parents:
            item.add_marker(pytest.mark.helm)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EmbeddedEtcd]:
    """A fresh single-member etcd on free loopback ports with its own data dir."""
    server = EmbeddedEtcd(tmp_path / "etcd-data")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def adapter_dirs(tmp_path: Path) -> Callable[..., Path]:
    root = tmp_path / "adapters"

    def make(name: str, rank: int = 8) -> Path:
        return make_adapter_dir(root, name, rank)

    return make


@pytest.fixture
def local_fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    """The test's own fleet of processes in its tmp_path; every child SIGKILLed by PID at teardown."""
    fleet = LocalFleet(tmp_path)
    try:
        yield fleet
    finally:
        fleet.stop(kill=True)


@pytest.fixture
def start_workers(local_fleet: LocalFleet) -> Callable[..., list[ManagedProcess]]:
    """Start N simulated workers as real processes, until healthy."""
    def start(n: int = 1, *, model: str = BASE_MODEL, extra_args: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> list[ManagedProcess]:
        return [w.proc for w in local_fleet.start_workers([extra_args] * n, model=model, env=env)]

    return start


@pytest.fixture
def start_router(tmp_path: Path, etcd: EmbeddedEtcd, local_fleet: LocalFleet) -> Callable[..., LocalRouter]:
    """Start `lora-router serve` against the test etcd with a config given as a dict; waits for /ready
    (or /health with `ready=False`); `workers` are static `--worker` URLs."""
    local_fleet.use_etcd(etcd)
    count = itertools.count()

    def start(config: dict[str, object], *, workers: Sequence[str] = (), router_id: str | None = None,
              ready: bool = True, extra_args: tuple[str, ...] = ()) -> LocalRouter:
        rid = router_id or f"router-{next(count)}"
        config_path = tmp_path / f"{rid}.yaml"
        config_path.write_text(json.dumps(config))
        (router,) = local_fleet.start_routers(config_path, [rid], ready=ready, static_workers=workers,
                                              extra_args=extra_args)
        return router

    return start


@pytest.fixture
def poll_until() -> Callable[..., object]:
    """`router.waiting.wait_until` with the positional timeout its many callers here pass."""
    def poll(check: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.05,
             what: str = "condition") -> object:
        return wait_until(check, timeout_s=timeout_s, what=what, interval_s=interval_s)

    return poll
