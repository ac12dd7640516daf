"""The workers the contract suite runs against: the simulated one always, real vLLM when its env exists.

A backend knows how to make an adapter directory and how to start a worker
with given options; the tests never know which one they talk to.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from router.localfleet import make_adapter_dir, sim_worker
from router.procs import ManagedProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "realvllm"))

import vllm_backend

MAX_LORA_RANK = 8


class Backend(Protocol):
    name: str
    model: str
    slow: bool
    """Starting a worker takes tens of seconds: share workers where the test allows."""

    def adapter(self, root: Path, name: str, rank: int = 8) -> Path: ...

    def worker(self, log_dir: Path, *, api_key: str | None = None, runtime_updates: bool = True,
               lora_modules: Mapping[str, Path] | None = None) -> ManagedProcess: ...


class SimBackend:
    name = "sim"
    model = "sim-base"
    slow = False

    def adapter(self, root: Path, name: str, rank: int = 8) -> Path:
        return make_adapter_dir(root, name, rank)

    def worker(self, log_dir: Path, *, api_key: str | None = None, runtime_updates: bool = True,
               lora_modules: Mapping[str, Path] | None = None) -> ManagedProcess:
        args = ["--speed", "0.01", "--max-loras", "2", "--max-lora-rank", str(MAX_LORA_RANK)]
        if lora_modules:
            args += ["--lora-modules", *(f"{n}={p}" for n, p in lora_modules.items())]
        env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True" if runtime_updates else "False"}
        if api_key:
            env["VLLM_API_KEY"] = api_key
        return sim_worker(log_dir, model=self.model, extra_args=args, env=env)


class VllmBackend:
    name = "vllm"
    slow = True

    def __init__(self, model: vllm_backend.TinyModel) -> None:
        self._model = model
        self.model = model.served_name

    def adapter(self, root: Path, name: str, rank: int = 8) -> Path:
        return self._model.make_adapter(root, name, rank)

    def worker(self, log_dir: Path, *, api_key: str | None = None, runtime_updates: bool = True,
               lora_modules: Mapping[str, Path] | None = None) -> ManagedProcess:
        env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True" if runtime_updates else "False"}
        return vllm_backend.vllm_worker(self._model, log_dir, api_key=api_key, lora_modules=lora_modules,
                                        max_lora_rank=MAX_LORA_RANK, env=env)
