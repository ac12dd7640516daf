"""A real S3 API server (moto's standalone server, its own process on a loopback port), and registrars
that fetch from it into a cache directory beside simulated workers."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from s3_helpers import CREDENTIALS, S3

from discovery.embedded import EmbeddedEtcd
from discovery.ports import free_port
from router.procs import ManagedProcess, python_cli


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3]:
    port = free_port()
    moto = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = ManagedProcess([moto, "-H", "127.0.0.1", "-p", str(port)],
                          health_url=f"http://127.0.0.1:{port}/moto-api/", log_path=tmp_path / "moto.log")
    proc.start(timeout_s=60)
    try:
        yield S3(f"http://127.0.0.1:{port}")
    finally:
        proc.kill()


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
