"""`serve` with its embedded etcd across a restart: same --state-dir, same port, so a registrar started
against it reconnects by itself and its worker is routed to again, with no action on the worker side."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from discovery.ports import free_port, free_ports
from router.localfleet import base_url
from router.procs import ManagedProcess, python_cli


def _get(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError):
        return None


def _routed(router: str) -> bool:
    body = json.dumps({"model": "kept", "prompt": "x", "max_tokens": 2}).encode()
    req = urllib.request.Request(router + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _etcd_command_line(data_dir: Path) -> list[str]:
    """The running embedded etcd's argv, found by its data directory in /proc."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if str(data_dir).encode() in argv:
            return [a.decode() for a in argv]
    raise AssertionError(f"no process runs etcd on {data_dir}")


def test_a_registrar_keeps_its_worker_registered_across_a_serve_restart_with_embedded_etcd(
        tmp_path: Path, start_workers: Callable, adapter_dirs: Callable, poll_until: Callable) -> None:
    root = adapter_dirs("kept").parent
    config = {"security": {"allowed_path_prefixes": [str(root)]}, "control": {"tick_s": 0.3, "reconcile_s": 0.5},
              "adapters": [{"name": "kept", "source": str(root / "kept"), "base_model": "sim-base"}]}
    (tmp_path / "router.yaml").write_text(json.dumps(config))
    etcd_port, port = free_ports(2)
    router = f"http://127.0.0.1:{port}"
    argv = python_cli("router", "serve", "--config", str(tmp_path / "router.yaml"), "--port", str(port),
                      "--state-dir", str(tmp_path / "state"), "--embedded-etcd-port", str(etcd_port),
                      "--router-id", "embedded")

    def serve() -> ManagedProcess:
        return ManagedProcess(argv, health_url=router + "/health", log_path=tmp_path / "router.log").start(60)

    worker = base_url(start_workers(1, extra_args=("--speed", "0.01"))[0])
    first = serve()
    registrar = ManagedProcess(
        python_cli("router", "register", "--etcd", f"http://127.0.0.1:{etcd_port}", "--worker-url", worker,
                   "--worker-id", "kept-worker", "--ttl", "5"),
        log_path=tmp_path / "registrar.log").start()
    procs = [first, registrar]
    try:
        poll_until(lambda: _routed(router), timeout_s=20, what="a request routed before the restart")
        etcd_argv = _etcd_command_line(tmp_path / "state" / "etcd")
        assert "--auto-compaction-retention" in etcd_argv, etcd_argv
        assert f"http://127.0.0.1:{etcd_port}" in etcd_argv
        first.stop(timeout_s=15)
        assert not first.alive()
        assert registrar.alive(), "the registrar gave up when etcd went away"

        procs.append(second := serve())
        poll_until(lambda: _routed(router), timeout_s=30, what="a request routed after the restart")
        status = _get(router + "/v1/router/status")
        assert status is not None and [w["id"] for w in status["workers"]] == ["kept-worker"]
        assert registrar.alive()
        listed = subprocess.run(python_cli("router", "status", "--etcd", f"http://127.0.0.1:{etcd_port}", "--json"),
                                capture_output=True, text=True, timeout=30, check=True)
        assert [w["id"] for w in json.loads(listed.stdout)["workers"]] == ["kept-worker"]
        assert second.alive()
    finally:
        for proc in reversed(procs):
            proc.stop(timeout_s=15)  # SIGTERM: serve stops its etcd (a child in its own session) on the way out


def _port_with_next_taken() -> tuple[int, socket.socket]:
    """A free port whose successor this test holds (as anyone's outgoing connection may, between two starts)."""
    for _ in range(50):
        port = free_port()
        holder = socket.socket()
        try:
            holder.bind(("127.0.0.1", port + 1))
        except OSError:
            holder.close()
            continue
        holder.listen()
        return port, holder
    raise AssertionError("no free port pair")


def test_serve_starts_its_embedded_etcd_when_the_port_after_its_client_port_is_taken(tmp_path: Path) -> None:
    (tmp_path / "router.yaml").write_text("{}")
    etcd_port, holder = _port_with_next_taken()
    port = free_port()
    with holder:
        router = ManagedProcess(
            python_cli("router", "serve", "--config", str(tmp_path / "router.yaml"), "--port", str(port),
                       "--state-dir", str(tmp_path / "state"), "--embedded-etcd-port", str(etcd_port)),
            health_url=f"http://127.0.0.1:{port}/health", log_path=tmp_path / "router.log")
        try:
            router.start(60)
            assert f"http://127.0.0.1:{etcd_port}" in _etcd_command_line(tmp_path / "state" / "etcd")
        finally:
            router.stop(timeout_s=15)
