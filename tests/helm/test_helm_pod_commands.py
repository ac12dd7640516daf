"""The chart's router and registrar command lines, run as processes, make a working system.

Kubernetes' part is played by hand: $(POD_NAME)/$(POD_IP) are substituted, the
ConfigMap's config.yaml is written to a file, and the etcd endpoints and ports
are moved onto the test's loopback etcd and free ports.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed: pip install -e '.[helm]'")
pytest.importorskip("router.commands.register", reason="the register command is not importable yet")
pytest.importorskip("router.server", reason="the serve command is not importable yet")

from helmchart import FULLNAME, container, find, flag, render

from discovery.embedded import EmbeddedEtcd
from discovery.ports import free_port
from router.localfleet import base_url
from router.procs import ManagedProcess, python_cli
from router.waiting import wait_until

VALUES = {"workers": {"vllm": {"enabled": True, "maxLoras": 4}}, "router": {"processes": 1}}
WORKER_ID = "vllm-pod-0"
ROUTER_ID = "router-pod-0"
DEADLINE_S = 30.0


def replace_flag(args: list[str], name: str, value: str) -> list[str]:
    at = args.index(name) + 1
    return [*args[:at], value, *args[at + 1:]]


def etcd_keys(etcd: EmbeddedEtcd, prefix: str) -> list[str]:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                       "range_end": base64.b64encode(end.encode()).decode(), "keys_only": True}).encode()
    with urllib.request.urlopen(f"{etcd.endpoint}/v3/kv/range", data=body, timeout=5) as response:
        kvs = json.loads(response.read()).get("kvs", [])
    return [base64.b64decode(kv["key"]).decode() for kv in kvs]


def poll(check: Callable[[], bool], what: str) -> None:
    wait_until(check, timeout_s=DEADLINE_S, what=what, interval_s=0.1)


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


@pytest.fixture
def procs() -> Iterator[list[ManagedProcess]]:
    started: list[ManagedProcess] = []
    yield started
    for proc in started:
        proc.kill()


def test_registrar_and_router_as_the_chart_runs_them(
        tmp_path: Path, etcd: EmbeddedEtcd, start_workers: Callable[..., list[ManagedProcess]],
        procs: list[ManagedProcess]) -> None:
    manifests = render(VALUES)
    [worker] = start_workers(1)
    worker_port = base_url(worker).rsplit(":", 1)[1]

    registrar_args = container(find(manifests, "Deployment", f"{FULLNAME}-vllm"), "registrar")["args"]
    registrar_args = replace_flag(registrar_args, "--etcd", etcd.endpoint)
    url = flag(registrar_args, "--worker-url").replace("$(POD_IP)", "127.0.0.1").replace(":8000", f":{worker_port}")
    registrar_args = replace_flag(replace_flag(registrar_args, "--worker-url", url), "--worker-id", WORKER_ID)
    procs.append(ManagedProcess(python_cli("router", *registrar_args),
                                log_path=tmp_path / "registrar.log").start())
    prefix = flag(registrar_args, "--etcd-prefix")
    poll(lambda: f"{prefix}/workers/{WORKER_ID}" in etcd_keys(etcd, f"{prefix}/workers/"),
         "the registrar did not register the worker")

    config = tmp_path / "config.yaml"
    config.write_text(find(manifests, "ConfigMap", f"{FULLNAME}-router")["data"]["config.yaml"])
    port = free_port()
    router_args = container(find(manifests, "Deployment", f"{FULLNAME}-router"), "router")["args"]
    for name, value in (("--etcd", etcd.endpoint), ("--config", str(config)), ("--port", str(port)),
                        ("--router-id", ROUTER_ID), ("--state-dir", str(tmp_path / "state")),
                        ("--host", "127.0.0.1")):
        router_args = replace_flag(router_args, name, value)
    router = ManagedProcess(python_cli("router", *router_args), health_url=f"http://127.0.0.1:{port}/health",
                            log_path=tmp_path / "router.log")
    procs.append(router.start())
    poll(lambda: http_status(f"http://127.0.0.1:{port}/ready") == 200,
         "the router did not become ready (liveness /health answered)")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as response:
        served = [m["id"] for m in json.loads(response.read())["data"]]
    assert "sim-base" in served, "the registered worker's base model is served through the router"
