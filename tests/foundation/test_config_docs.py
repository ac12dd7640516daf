"""docs/configuration.md is generated from the config schema and current; every key has a meaning;
the config file can be named by LORA_ROUTER_CONFIG."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from discovery.embedded import EmbeddedEtcd
from discovery.ports import free_port
from router.localfleet import base_url
from router.procs import ManagedProcess, python_cli

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "config_docs.py"


def test_configuration_md_is_current() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr + " (run: python scripts/config_docs.py)"


def test_every_key_is_documented_with_a_meaning() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import config_docs
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert config_docs.undocumented() == []
    text = (ROOT / "docs" / "configuration.md").read_text()
    for key in ("`timeouts.read_s`", "`placement.defaults.min_replicas`", "`placement.adapters.<name>.max_replicas`",
                "`tenants.<name>.keys_file`", "`adapters[].source`", "`etcd.password_file`", "`control.tick_s`"):
        assert f"| {key} |" in text, key


def test_the_generator_notices_a_stale_file(tmp_path: Path) -> None:
    """--check compares with what it would write: a hand edit is caught."""
    copy = tmp_path / "scripts"
    copy.mkdir()
    (tmp_path / "docs").mkdir()
    (copy / "config_docs.py").write_text(SCRIPT.read_text())
    (tmp_path / "docs" / "configuration.md").write_text((ROOT / "docs" / "configuration.md").read_text()
                                                       .replace("`read_s`", "`reed_s`"))
    result = subprocess.run([sys.executable, str(copy / "config_docs.py"), "--check"], capture_output=True,
                            text=True, timeout=60, check=False, cwd=ROOT)
    assert result.returncode == 1 and "out of date" in result.stderr


def test_serve_reads_the_config_named_by_lora_router_config(
        tmp_path: Path, etcd: EmbeddedEtcd, start_workers: Callable) -> None:
    """With no --config, LORA_ROUTER_CONFIG names the file: its admin key closes the router."""
    (tmp_path / "admin-keys").write_text("sk-admin-from-env-config\n")
    config = tmp_path / "router.yaml"
    config.write_text(f"auth: {{admin_keys_file: {tmp_path / 'admin-keys'}}}\n")
    [worker] = start_workers(1)
    port = free_port()
    router = ManagedProcess(python_cli("router", "serve", "--port", str(port), "--etcd", etcd.endpoint,
                                       "--worker", base_url(worker)),
                            env={"LORA_ROUTER_CONFIG": str(config)}, health_url=f"http://127.0.0.1:{port}/ready",
                            log_path=tmp_path / "router.log")
    router.start(timeout_s=60)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert refused.value.code == 401
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models",
                                         headers={"Authorization": "Bearer sk-admin-from-env-config"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
    finally:
        router.kill()
