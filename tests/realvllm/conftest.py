"""Fixtures for tests against real vLLM; skipped unless LORA_ROUTER_VLLM_PYTHON is set."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from vllm_backend import (
    SKIP_REASON,
    TinyModel,
    build_tiny_model,
    start_all,
    stop_all,
    vllm_python,
    vllm_worker,
)

from router.procs import ManagedProcess


@pytest.fixture(scope="session")
def real_vllm_python() -> str:
    python = vllm_python()
    if python is None:
        pytest.skip(SKIP_REASON)
    return python


@pytest.fixture(scope="session")
def tiny_model(real_vllm_python: str, tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The tiny Llama and a pool of adapters, built once for the whole session."""
    return build_tiny_model(real_vllm_python, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def start_vllm_workers(tiny_model: TinyModel,
                       tmp_path: Path) -> Iterator[Callable[..., list[ManagedProcess]]]:
    """Start N real vLLM servers side by side, pinned to the cores in turn; stopped by PID.

    Keyword arguments go to vllm_backend.vllm_worker (api_key, lora_modules,
    max_loras, max_lora_rank, extra_args, env).
    """
    started: list[ManagedProcess] = []

    def start(n: int = 1, **kwargs: object) -> list[ManagedProcess]:
        procs = [vllm_worker(tiny_model, tmp_path, **kwargs)  # type: ignore[arg-type]
                 for _ in range(n)]
        started.extend(procs)
        start_all(procs)
        return procs

    yield start
    stop_all(started)
