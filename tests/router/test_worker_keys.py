"""Per-worker API keys: the registry record names where the key is; the router uses it for that worker only."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

from discovery.embedded import EmbeddedEtcd
from discovery.ports import free_port
from router.localfleet import base_url, sim_worker
from router.procs import ManagedProcess, python_cli


def test_a_worker_with_its_own_key_is_loaded_and_served(
        tmp_path: Path, etcd: EmbeddedEtcd, adapter_dirs: Callable, poll_until: Callable) -> None:
    root = adapter_dirs("keyed").parent
    worker = sim_worker(tmp_path, extra_args=("--speed", "0.01", "--api-key", "pool-key-42")).start()
    procs = [worker]
    try:
        url = base_url(worker)
        procs.append(ManagedProcess(
            python_cli("router", "register", "--etcd", etcd.endpoint, "--worker-url", url, "--ttl", "3",
                       "--api-key-file", str(_write(tmp_path / "k", "pool-key-42")),
                       "--api-key-ref", "env:POOL_KEY"),
            log_path=tmp_path / "registrar.log").start())
        port = free_port()
        config = {"security": {"allowed_path_prefixes": [str(root)]}, "control": {"tick_s": 0.5, "reconcile_s": 1},
                  "adapters": [{"name": "keyed", "source": str(root / "keyed"), "base_model": "sim-base"}]}
        (tmp_path / "router.yaml").write_text(json.dumps(config))
        router = ManagedProcess(
            python_cli("router", "serve", "--config", str(tmp_path / "router.yaml"), "--port", str(port),
                       "--etcd", etcd.endpoint),
            health_url=f"http://127.0.0.1:{port}/ready", env={"POOL_KEY": "pool-key-42"},
            log_path=tmp_path / "router.log")
        procs.append(router.start(timeout_s=60))

        def served() -> bool:
            body = json.dumps({"model": "keyed", "prompt": "x", "max_tokens": 2}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status == 200
            except urllib.error.HTTPError:
                return False

        poll_until(served, timeout_s=30, what="a request served by the keyed worker")
        assert "pool-key-42" not in (tmp_path / "router.log").read_text()
    finally:
        for p in reversed(procs):
            p.kill()


def _write(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    return path
