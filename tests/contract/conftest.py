"""Contract fixtures, parameterised over backends: `sim` always, `vllm` when LORA_ROUTER_VLLM_PYTHON is set."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from backends import Backend, SimBackend, VllmBackend, vllm_backend

from router.procs import ManagedProcess


@pytest.fixture(scope="session", params=["sim", pytest.param("vllm", marks=pytest.mark.real_vllm)])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    if request.param == "sim":
        return SimBackend()
    python = vllm_backend.vllm_python()
    if python is None:
        pytest.skip(vllm_backend.SKIP_REASON)
    return VllmBackend(vllm_backend.build_tiny_model(python, tmp_path_factory.mktemp("tiny-model")))


class Worker:
    """A started worker and plain-HTTP helpers that return (status, headers, body bytes)."""

    def __init__(self, proc: ManagedProcess, backend: Backend, adapter_root: Path,
                 api_key: str | None = None) -> None:
        self.proc = proc
        self.backend = backend
        self.adapter_root = adapter_root
        self.api_key = api_key
        assert proc.health_url is not None
        self.url = proc.health_url.removesuffix("/health")

    def call(self, method: str, path: str, body: object | None = None, *, key: str | bool | None = True,
             raw: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        use = self.api_key if key is True else (key or None)
        if use:
            headers["Authorization"] = f"Bearer {use}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def adapter(self, name: str, rank: int = 8) -> Path:
        return self.backend.adapter(self.adapter_root, name, rank)

    def held(self) -> set[str]:
        _, _, body = self.call("GET", "/v1/models")
        return {m["id"] for m in json.loads(body)["data"] if m["parent"] is not None}


def _start(backend: Backend, tmp: Path, **kwargs: object) -> Worker:
    proc = backend.worker(tmp, **kwargs)  # type: ignore[arg-type]
    proc.start(timeout_s=300 if backend.slow else 30)
    return Worker(proc, backend, tmp / "adapters", kwargs.get("api_key"))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def worker(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One default worker per backend for the whole session (real vLLM starts take tens of seconds)."""
    w = _start(backend, tmp_path_factory.mktemp(f"contract-{backend.name}"))
    yield w
    w.proc.stop()


@pytest.fixture
def start_worker(backend: Backend, tmp_path: Path) -> Iterator:
    started: list[Worker] = []

    def start(**kwargs: object) -> Worker:
        w = _start(backend, tmp_path, **kwargs)
        started.append(w)
        return w

    yield start
    for w in started:
        w.proc.stop()
