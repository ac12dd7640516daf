"""What a newcomer's first mistakes look like: one line on stderr and exit code 2, never a traceback,
and nothing written to etcd by a router that could not start."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from discovery.embedded import EmbeddedEtcd


def _cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def _etcd_key_count(etcd: EmbeddedEtcd, prefix: str) -> int:
    body = {"key": base64.b64encode(prefix.encode()).decode(),
            "range_end": base64.b64encode(prefix[:-1].encode() + bytes([ord(prefix[-1]) + 1])).decode(),
            "count_only": True}
    req = urllib.request.Request(etcd.endpoint + "/v3/kv/range", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return int(json.loads(r.read()).get("count", 0))


@pytest.mark.parametrize("module,prog", [("router", "lora-router"), ("bench", "lora-bench")])
def test_version_prints_the_installed_version(module: str, prog: str) -> None:
    done = _cli(module, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{prog} {importlib.metadata.version('lora-router')}"


def test_serve_with_a_bad_config_names_file_key_and_value(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("timeouts:\n  connect_s: soon\n")
    line = _one_line_error(_cli("router", "serve", "--config", str(bad), "--etcd", "http://127.0.0.1:9",
                                "--port", "0"))
    assert line.startswith("lora-router serve: error: ")
    assert str(bad) in line and "timeouts.connect_s" in line and "'soon'" in line


@pytest.mark.parametrize("flag,value", [("--log-level", "verbose"), ("--port", "99999"), ("--port", "http")])
def test_serve_with_a_bad_flag_value_is_one_line(flag: str, value: str) -> None:
    line = _one_line_error(_cli("router", "serve", flag, value, "--etcd", "http://127.0.0.1:9"))
    assert flag in line and f"'{value}'" in line


def test_serve_on_a_port_in_use_fails_before_writing_to_etcd(
        tmp_path: Path, etcd: EmbeddedEtcd, adapter_dirs: Callable[..., Path]) -> None:
    path = adapter_dirs("declared")
    config = tmp_path / "router.yaml"
    config.write_text(json.dumps({"security": {"allowed_path_prefixes": [str(path.parent)]},
                                  "adapters": [{"name": "declared", "source": str(path), "base_model": "sim-base"}]}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra in ((), ("--workers", "2")):
            line = _one_line_error(_cli("router", "serve", "--config", str(config), "--etcd", etcd.endpoint,
                                        "--port", str(port), *extra))
            assert f"cannot listen on 127.0.0.1:{port}" in line and "in use" in line
    assert _etcd_key_count(etcd, "/lora-router/") == 0, "the config's adapters were written before the bind"


def test_config_check_holds_config_adapters_and_key_files_to_the_rules_serve_applies(tmp_path: Path) -> None:
    """What `serve` (and a reload) would refuse, `config check` lists, every problem at once."""
    models = tmp_path / "models"
    models.mkdir()
    bad = tmp_path / "router.yaml"
    bad.write_text(f"security: {{allowed_path_prefixes: [{models}]}}\n"
                   "adapters:\n"
                   f"  - {{name: a, source: {models}/a, base_model: b}}\n"
                   f"  - {{name: a, source: {models}/a2, base_model: b}}\n"
                   "  - {name: rel, source: models/x, base_model: b}\n"
                   "  - {name: out, source: /etc/passwd, base_model: b}\n"
                   f"  - {{name: nobase, source: {models}/n}}\n"
                   "  - {name: ftp, source: 'ftp://h/x', base_model: b}\n"
                   f"tenants: {{t1: {{keys_file: {tmp_path}/missing-1}}}}\n"
                   f"auth: {{admin_keys_file: {tmp_path}/missing-2}}\n")
    done = _cli("router", "config", "check", str(bad))
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    for fragment in ["adapters[1] ('a'): the same name as adapters[0]", "adapters[2] ('rel'): The adapter path",
                     "adapters[3] ('out'):", "adapters[4] ('nobase'): base_model is missing",
                     "adapters[5] ('ftp'): Unknown source scheme"]:
        assert any(fragment in line for line in lines), (fragment, lines)
    assert len(lines) == 5, lines  # schema and references first: the key files are read once those pass
    bad.write_text(f"tenants: {{t1: {{keys_file: {tmp_path}/missing-1}}}}\n"
                   f"auth: {{admin_keys_file: {tmp_path}/missing-2}}\n")
    done = _cli("router", "config", "check", str(bad))
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 2, done.stderr
    assert "missing-1" in done.stderr and "missing-2" in done.stderr


def test_config_check_reports_every_error_with_key_value_and_file(tmp_path: Path) -> None:
    """Schema errors in several sections and list entries, and a reference error found on what is left valid."""
    bad = tmp_path / "router.yaml"
    bad.write_text("timeouts: {connect_s: soon, nope: 1}\n"
                   "adapters:\n"
                   "  - {name: 5, source: /a}\n"
                   "  - {source: /c}\n"
                   "  - {name: ok, source: /b, rank: x}\n"
                   "aliases: {sup: {ok: -1}}\n"
                   "control: {down_after_failures: 0}\n")
    done = _cli("router", "config", "check", str(bad))
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"error: {bad}: {line}" for line in [
        "timeouts.connect_s: Expected `float`, got `str` (got 'soon')",
        "timeouts.nope: Object contains unknown field `nope` (got 1)",
        "adapters[0].name: Expected `str`, got `int` (got 5)",
        "adapters[1]: Object missing required field `name`",
        "adapters[2].rank: Expected `int`, got `str` (got 'x')",
        "control.down_after_failures: Expected `int` >= 1 (got 0)",
        "aliases.sup.ok: weight must be > 0, got -1.0",
        "adapters[0] ('ok'): Local adapter paths are not allowed: security.allowed_path_prefixes is empty.",
        "adapters[0] ('ok'): base_model is missing (give it here or as the top-level base_model)",
    ]]
