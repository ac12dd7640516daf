"""`lora-router status` against a live fleet: holders from the workers themselves, failures with reasons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from discovery.embedded import EmbeddedEtcd
from discovery.ports import free_port
from router.localfleet import base_url, make_adapter_dir, sim_worker
from router.procs import ManagedProcess, python_cli

POOL_KEY = "pool-key-77"


def _status(etcd: EmbeddedEtcd, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, "-m", "router", "status", "--etcd", etcd.endpoint, "--json"],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_status_shows_holders_and_why_a_placed_adapter_is_not_held(
        tmp_path: Path, etcd: EmbeddedEtcd, poll_until: Callable) -> None:
    """Two workers (one behind a key), an adapter on both, and one of rank 32 that the workers refuse
    (their --max-lora-rank is 8 while the registrars announce 64): placed, never held."""
    root = tmp_path / "adapters"
    make_adapter_dir(root, "good", 8)
    make_adapter_dir(root, "big", 32)
    key_file = tmp_path / "pool-key"
    key_file.write_text(POOL_KEY + "\n")
    procs: list[ManagedProcess] = []
    try:
        open_worker = sim_worker(tmp_path, extra_args=("--speed", "0.01", "--max-lora-rank", "8")).start()
        keyed_worker = sim_worker(tmp_path, extra_args=("--speed", "0.01", "--max-lora-rank", "8"),
                                  env={"VLLM_API_KEY": POOL_KEY}).start()
        procs += [open_worker, keyed_worker]
        for worker, key_args in ((open_worker, ()), (keyed_worker, ("--api-key-file", str(key_file),
                                                                    "--api-key-ref", "env:POOL_KEY"))):
            procs.append(ManagedProcess(
                python_cli("router", "register", "--etcd", etcd.endpoint, "--worker-url", base_url(worker),
                           "--ttl", "3", "--max-lora-rank", "64", *key_args),
                log_path=tmp_path / f"registrar-{worker.pid}.log").start())
        port = free_port()
        config = {"security": {"allowed_path_prefixes": [str(root)]}, "control": {"tick_s": 0.5, "reconcile_s": 1},
                  "placement": {"defaults": {"min_replicas": 2}},
                  "adapters": [{"name": n, "source": str(root / n), "base_model": "sim-base"} for n in ("good", "big")]}
        (tmp_path / "router.yaml").write_text(json.dumps(config))
        procs.append(ManagedProcess(
            python_cli("router", "serve", "--config", str(tmp_path / "router.yaml"), "--port", str(port),
                       "--etcd", etcd.endpoint),
            health_url=f"http://127.0.0.1:{port}/ready", env={"POOL_KEY": POOL_KEY},
            log_path=tmp_path / "router.log").start(timeout_s=60))
        with_key = {k: v for k, v in os.environ.items() if k != "POOL_KEY"} | {"POOL_KEY": POOL_KEY}
        status = poll_until(lambda: (s := _status(etcd, with_key))["adapters"].get("good", {}).get("holders") and
                            len(s["adapters"]["good"]["holders"]) == 2 and s, timeout_s=30,
                            what="both workers holding good")
        ids = {w["url"]: w["id"] for w in status["workers"]}
        open_id, keyed_id = ids[base_url(open_worker)], ids[base_url(keyed_worker)]
        good = status["adapters"]["good"]
        assert sorted(good["replicas"]) == good["holders"] == sorted([open_id, keyed_id])
        assert good["failures"] == {}
        big = status["adapters"]["big"]
        assert big["replicas"] and big["holders"] == []
        assert big["failures"] == dict.fromkeys(big["replicas"], "not loaded")
        assert all(w["error"] is None and "good" in w["holds"] for w in status["workers"])

        without_key = {k: v for k, v in os.environ.items() if k != "POOL_KEY"}
        blind = _status(etcd, without_key)
        keyed = next(w for w in blind["workers"] if w["id"] == keyed_id)
        assert keyed["holds"] == [] and keyed["error"].startswith("unauthorized")
        assert blind["adapters"]["good"]["holders"] == [open_id]
        assert blind["adapters"]["good"]["failures"] == {keyed_id: keyed["error"]}
        human = subprocess.run([sys.executable, "-m", "router", "status", "--etcd", etcd.endpoint],
                               capture_output=True, text=True, timeout=60, env=without_key, check=True).stdout
        assert f"failed on {keyed_id}: unauthorized" in human and f"holders: {open_id}" in human
    finally:
        for p in reversed(procs):
            p.kill()
