"""Fixtures shared by every suite: a real etcd, real worker processes, adapter directories."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from discovery.embedded import EmbeddedEtcd
from router.devfleet import make_adapter_dir, sim_worker
from router.procs import ManagedProcess


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
