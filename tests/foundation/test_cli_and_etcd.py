"""The foundation's own checks: both CLIs explain every subcommand; the test etcd is real."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from bench.cli import COMMANDS as BENCH_COMMANDS
from discovery.embedded import EmbeddedEtcd
from router.cli import COMMANDS as ROUTER_COMMANDS
from router.clikit import available


@pytest.mark.parametrize("module,commands", [("router", ROUTER_COMMANDS), ("bench", BENCH_COMMANDS)])
def test_help_lists_every_available_subcommand(module: str, commands: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True)
    present = available(commands)
    assert present, "no subcommand is installed"
    for name in present:
        assert name in out.stdout
        sub = subprocess.run([sys.executable, "-m", module, name, "--help"], capture_output=True, text=True,
                             check=False)
        assert sub.returncode == 0, sub.stderr
        assert "usage:" in sub.stdout


def test_embedded_etcd_is_a_real_server_that_keeps_data_across_restart(etcd: EmbeddedEtcd) -> None:
    import base64
    import json

    def call(path: str, body: dict[str, str]) -> dict[str, object]:
        req = urllib.request.Request(etcd.endpoint + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    key = base64.b64encode(b"/t/k").decode()
    call("/v3/kv/put", {"key": key, "value": base64.b64encode(b"v").decode()})
    etcd.restart()
    got = call("/v3/kv/range", {"key": key})
    assert base64.b64decode(got["kvs"][0]["value"]) == b"v"  # type: ignore[index]
