"""Key rotation and revocation through a real router: SIGHUP and key-file edits apply new key files, even
when router.yaml itself is unchanged, and the router says what changed without ever logging a key."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from discovery.embedded import EmbeddedEtcd
from router.localfleet import base_url
from router.procs import ManagedProcess, python_cli


def _status(url: str, key: str, body: dict[str, object] | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {key}",
                                                           "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _rewrite_keeping_stamp(path: Path, text: str) -> None:
    """Same size, same inode, same mtime: no file watcher can see this edit, only a SIGHUP applies it."""
    before = path.stat()
    assert len(text.encode()) == before.st_size
    with open(path, "r+") as f:
        f.write(text)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)


def _keyed_router(tmp_path: Path, start_workers: Callable, start_router: Callable,
                  admin: str, tenant: str) -> tuple[str, Path, Path, ManagedProcess, Path]:
    (tmp_path / "admin-keys").write_text(admin)
    (tmp_path / "acme-keys").write_text(tenant)
    workers = [base_url(w) for w in start_workers(1, extra_args=("--speed", "0.01"))]
    config = {"auth": {"admin_keys_file": str(tmp_path / "admin-keys")},
              "tenants": {"acme": {"keys_file": str(tmp_path / "acme-keys")}}}
    router = start_router(config, workers=workers, router_id="keys")
    return router.url, tmp_path / "admin-keys", tmp_path / "acme-keys", router.proc, tmp_path / "keys.log"


def test_sighup_applies_rotated_admin_and_tenant_keys_with_the_yaml_unchanged(
        tmp_path: Path, start_workers: Callable, start_router: Callable, poll_until: Callable) -> None:
    url, admin_file, acme_file, proc, log = _keyed_router(
        tmp_path, start_workers, start_router, admin="admin-key-111\n", tenant="acme-key-AAA\n")
    assert _status(url + "/v1/models", "acme-key-AAA") == 200
    assert _status(url + "/v1/router/status", "admin-key-111") == 200
    assert _status(url + "/v1/router/status", "admin-key-222") == 401

    _rewrite_keeping_stamp(admin_file, "admin-key-222\n")
    _rewrite_keeping_stamp(acme_file, "acme-key-BBB\n")
    proc.signal(signal.SIGHUP)
    poll_until(lambda: _status(url + "/v1/router/status", "admin-key-222") == 200, timeout_s=10,
               what="the new admin key to work after SIGHUP")
    assert _status(url + "/v1/models", "acme-key-AAA") == 401, "a removed tenant key still works"
    assert _status(url + "/v1/router/status", "admin-key-111") == 401, "a removed admin key still works"
    assert _status(url + "/v1/models", "acme-key-BBB") == 200

    text = log.read_text()
    line = next(x for x in text.splitlines() if "SIGHUP: config version" in x)
    assert "auth.admin_keys_file" in line and "tenants.acme.keys_file" in line, line
    assert "keys.yaml" not in line, "router.yaml did not change"
    proc.signal(signal.SIGHUP)
    poll_until(lambda: "SIGHUP: nothing changed" in log.read_text(), timeout_s=10,
               what="a SIGHUP with nothing new to say so")
    assert not any(k in log.read_text() for k in ("admin-key-", "acme-key-")), "a key reached the log"


def test_an_edited_tenant_keys_file_revokes_a_key_without_a_signal(
        tmp_path: Path, start_workers: Callable, start_router: Callable, poll_until: Callable) -> None:
    url, _admin, acme_file, _proc, log = _keyed_router(
        tmp_path, start_workers, start_router, admin="admin-key\n", tenant="acme-leaving\nacme-staying\n")
    assert _status(url + "/v1/models", "acme-leaving") == 200
    acme_file.write_text("acme-staying\n")
    poll_until(lambda: _status(url + "/v1/models", "acme-leaving") == 401, timeout_s=10,
               what="the removed key to be refused")
    assert _status(url + "/v1/models", "acme-staying") == 200
    assert "file change: config version" in log.read_text()
    assert "acme-leaving" not in log.read_text()


def test_a_rotated_worker_key_file_is_read_again_without_a_membership_change(
        tmp_path: Path, etcd: EmbeddedEtcd, start_workers: Callable, start_router: Callable,
        adapter_dirs: Callable, poll_until: Callable) -> None:
    """The registrar's --api-key-ref names a file; the worker's key there changes while it stays registered."""
    root = adapter_dirs("keyed").parent
    worker = start_workers(1, extra_args=("--speed", "0.01", "--api-key", "worker-key-new"))[0]
    probe_key = tmp_path / "probe-key"
    probe_key.write_text("worker-key-new\n")
    ref = tmp_path / "worker-key-ref"
    ref.write_text("worker-key-old\n")
    registrar = ManagedProcess(
        python_cli("router", "register", "--etcd", etcd.endpoint, "--worker-url", base_url(worker), "--ttl", "3",
                   "--api-key-file", str(probe_key), "--api-key-ref", f"file:{ref}"),
        log_path=tmp_path / "registrar.log").start()
    try:
        config = {"security": {"allowed_path_prefixes": [str(root)]},
                  "control": {"tick_s": 0.3, "reconcile_s": 0.5, "retry_base_s": 0.1, "retry_max_s": 0.5},
                  "adapters": [{"name": "keyed", "source": str(root / "keyed"), "base_model": "sim-base"}]}
        router = start_router(config, router_id="wkeys", ready=False)
        completion = {"model": "keyed", "prompt": "x", "max_tokens": 2}
        poll_until(lambda: _workers_seen(router.url), timeout_s=15, what="the worker registered")
        assert _status(router.url + "/v1/completions", "-", completion) != 200, "the old key was accepted"
        ref.write_text("worker-key-new\n")
        poll_until(lambda: _status(router.url + "/v1/completions", "-", completion) == 200, timeout_s=20,
                   what="a request served with the rotated worker key")
        assert "worker-key-" not in (tmp_path / "wkeys.log").read_text()
    finally:
        registrar.kill()


def _workers_seen(url: str) -> int:
    with urllib.request.urlopen(url + "/v1/router/status", timeout=10) as r:
        return len(json.loads(r.read())["workers"])
