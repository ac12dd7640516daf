"""Fixtures shared by every suite: a real etcd, real worker processes, adapter directories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from discovery.embedded import EmbeddedEtcd
from router.devfleet import make_adapter_dir, sim_worker
from router.procs import ManagedProcess


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
def start_workers(tmp_path: Path) -> Iterator[Callable[..., list[ManagedProcess]]]:
    """Start N simulated workers as real processes; all are stopped by PID at teardown."""
    started: list[ManagedProcess] = []

    def start(n: int = 1, *, model: str = "sim-base", extra_args: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> list[ManagedProcess]:
        procs = [sim_worker(tmp_path, model=model, extra_args=extra_args, env=env) for _ in range(n)]
        for p in procs:
            started.append(p.start())
        return procs

    yield start
    for p in started:
        p.kill()


class RouterProcess:
    """A `lora-router serve` process and how to reach it."""

    def __init__(self, proc: ManagedProcess, port: int, config_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.config_path = config_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def start_router(tmp_path: Path, etcd: EmbeddedEtcd) -> Iterator[Callable[..., RouterProcess]]:
    """Start `lora-router serve` against the test etcd with a config given as a dict; waits for /ready."""
    import json

    from discovery.ports import free_port
    from router.procs import python_cli

    started: list[ManagedProcess] = []

    def start(config: dict[str, object], *, workers: list[str] = (), router_id: str | None = None,
              ready: bool = True, extra_args: tuple[str, ...] = ()) -> RouterProcess:
        port = free_port()
        rid = router_id or f"router-{port}"
        config_path = tmp_path / f"{rid}.yaml"
        config_path.write_text(json.dumps(config))
        argv = python_cli("router", "serve", "--config", str(config_path), "--port", str(port),
                          "--etcd", etcd.endpoint, "--router-id", rid, *extra_args)
        for url in workers:
            argv += ["--worker", url]
        health = "/ready" if ready else "/health"
        proc = ManagedProcess(argv, health_url=f"http://127.0.0.1:{port}{health}",
                              log_path=tmp_path / f"{rid}.log")
        started.append(proc.start(timeout_s=60))
        return RouterProcess(proc, port, config_path)

    yield start
    for p in started:
        p.kill()


def _poll_until(predicate: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.05,
                what: str = "condition") -> object:
    """Poll a condition with a deadline (never a bare sleep); returns the first truthy value."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture
def poll_until() -> Callable[..., object]:
    return _poll_until
