"""A real S3 API server (moto's standalone server, its own process on a loopback port), and registrars
that fetch from it into a cache directory beside simulated workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from s3_helpers import CREDENTIALS, S3, moto_server

from discovery.embedded import EmbeddedEtcd
from router.procs import ManagedProcess, python_cli


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3]:
    with moto_server(tmp_path) as server:
        yield server


@pytest.fixture
def start_registrar(tmp_path: Path, etcd: EmbeddedEtcd, s3: S3) -> Iterator[Callable[..., ManagedProcess]]:
    """`lora-router register` with a cache directory and the S3 endpoint; credentials only in its env."""
    started: list[ManagedProcess] = []

    def start(worker: str, cache_dir: Path, *extra: str) -> ManagedProcess:
        argv = python_cli("router", "register", "--etcd", etcd.endpoint, "--worker-url", worker, "--ttl", "3",
                          "--health-interval", "0.2", "--cache-dir", str(cache_dir),
                          "--s3-endpoint-url", s3.endpoint, *extra)
        proc = ManagedProcess(argv, env=CREDENTIALS,
                              log_path=tmp_path / f"registrar-{worker.rsplit(':', 1)[1]}-{len(started)}.log")
        started.append(proc.start())
        return proc

    yield start
    for p in started:
        p.kill()
