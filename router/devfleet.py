"""A local fleet for development, the demo, benchmarks and tests.

Simulated vLLM workers run as real processes (`python -m bench worker`): the
router never imports the simulator, it only talks HTTP to it, exactly as it
does to real vLLM. Adapter directories are made on disk with the one file the
worker contract checks (`adapter_config.json` with `r`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from discovery.ports import free_port
from router.procs import ManagedProcess, python_cli


def make_adapter_dir(root: str | Path, name: str, rank: int = 8) -> Path:
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
              "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "sim"}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def sim_worker(log_dir: str | Path, *, model: str = "sim-base", port: int | None = None,
               extra_args: Sequence[str] = (), env: dict[str, str] | None = None) -> ManagedProcess:
    """A simulated worker process (not started); runtime LoRA updating on, as a router needs."""
    port = port or free_port()
    argv = python_cli("bench", "worker", "--port", str(port), "--model", model, *extra_args)
    return ManagedProcess(
        argv,
        health_url=f"http://127.0.0.1:{port}/health",
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **(env or {})},
        log_path=Path(log_dir) / f"worker-{port}.log",
    )


def base_url(proc: ManagedProcess) -> str:
    """Where a child made here (worker or router) serves: its health URL less `/health`."""
    assert proc.health_url is not None
    return proc.health_url.removesuffix("/health")


worker_url = base_url


def registrar(log_dir: str | Path, etcd: str, url: str, *, slots: int, ttl: int = 3) -> ManagedProcess:
    """The registrar sidecar for a worker (not started): it has no health URL, its record in etcd is its sign."""
    return ManagedProcess(
        python_cli("router", "register", "--etcd", etcd, "--worker-url", url, "--slots", str(slots),
                   "--ttl", str(ttl)),
        log_path=Path(log_dir) / f"registrar-{url.rsplit(':', 1)[1]}.log")


def router_server(log_dir: str | Path, config: str | Path, etcd: str, router_id: str, *,
                  port: int | None = None, extra_args: Sequence[str] = ()) -> ManagedProcess:
    """A `lora-router serve` process on etcd discovery (not started); healthy once it answers /health."""
    port = port or free_port()
    return ManagedProcess(
        python_cli("router", "serve", "--config", str(config), "--port", str(port), "--etcd", etcd,
                   "--router-id", router_id, *extra_args),
        health_url=f"http://127.0.0.1:{port}/health", log_path=Path(log_dir) / f"{router_id}.log")
