"""The chart's etcd command line forms a real 3-member cluster.

The StatefulSet's args are run as they are, with only what Kubernetes would
provide swapped in: $(POD_NAME)/$(POD_NAMESPACE), and each member's DNS name
and ports mapped to loopback ports (three members cannot share 2379 here).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed: pip install -e '.[helm]'")

from helmchart import FULLNAME, NAMESPACE, container, find, render

from discovery.embedded import find_etcd_binary
from discovery.ports import free_port
from router.procs import ManagedProcess, ProcessStartFailed

ETCD = f"{FULLNAME}-etcd"
MEMBERS = 3


def member_host(index: int) -> str:
    return f"{ETCD}-{index}.{ETCD}-headless.{NAMESPACE}.svc.cluster.local"


def localise(arg: str, index: int, ports: list[dict[str, int]]) -> str:
    """What the arg says in pod `index`, with member addresses moved onto loopback ports."""
    arg = arg.replace("$(POD_NAME)", f"{ETCD}-{index}").replace("$(POD_NAMESPACE)", NAMESPACE)
    for other, port in enumerate(ports):
        for name, default in (("client", 2379), ("peer", 2380)):
            arg = arg.replace(f"http://{member_host(other)}:{default}", f"http://127.0.0.1:{port[name]}")
    for name, default in (("client", 2379), ("peer", 2380), ("metrics", 2381)):
        arg = arg.replace(f"http://0.0.0.0:{default}", f"http://127.0.0.1:{ports[index][name]}")
    return arg


def call(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(url, data=data, timeout=5) as response:
        return json.loads(response.read())


def start_cluster(etcd: dict, data_dir: Path) -> tuple[list[ManagedProcess], list[dict[str, int]]]:
    """Start every member at once (a new cluster needs a quorum), then wait for each to be ready."""
    ports = [{name: free_port() for name in ("client", "peer", "metrics")} for _ in range(MEMBERS)]
    members: list[ManagedProcess] = []
    data_dir.mkdir()
    try:
        for index in range(MEMBERS):
            args = [localise(a, index, ports) for a in etcd["args"]]
            args = [a.replace("--data-dir=/var/lib/etcd", f"--data-dir={data_dir}/m{index}") for a in args]
            members.append(ManagedProcess([find_etcd_binary(), *args],
                                          log_path=data_dir / f"etcd-{index}.log").start())
        for index, member in enumerate(members):
            member.health_url = f"http://127.0.0.1:{ports[index]['metrics']}{etcd['readinessProbe']['httpGet']['path']}"
            member.wait_healthy(30.0)
    except ProcessStartFailed:
        for member in members:
            member.kill()
        raise
    return members, ports


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[dict[str, int]]]:
    etcd = container(find(render({"etcd": {"replicas": MEMBERS}}), "StatefulSet", ETCD), "etcd")
    assert etcd["command"] == ["etcd"]
    for attempt in range(3):
        try:
            members, ports = start_cluster(etcd, tmp_path / f"try{attempt}")
            break
        except ProcessStartFailed as exc:
            # Free ports are picked before binding: another test may take one first. Nothing else is retried.
            if "address already in use" not in str(exc) or attempt == 2:
                raise
    try:
        yield ports
    finally:
        for member in members:
            member.kill()


def test_rendered_etcd_args_form_a_cluster(cluster: list[dict[str, int]]) -> None:
    listed = call(f"http://127.0.0.1:{cluster[0]['client']}/v3/cluster/member/list", {})["members"]
    assert sorted(m["name"] for m in listed) == [f"{ETCD}-{i}" for i in range(MEMBERS)]
    assert sorted(m["peerURLs"][0] for m in listed) == sorted(f"http://127.0.0.1:{p['peer']}" for p in cluster)
    key = "L2xvcmEtcm91dGVyL3Byb2Jl"  # base64("/lora-router/probe")
    call(f"http://127.0.0.1:{cluster[0]['client']}/v3/kv/put", {"key": key, "value": "b2s="})
    [kv] = call(f"http://127.0.0.1:{cluster[2]['client']}/v3/kv/range", {"key": key})["kvs"]
    assert kv["value"] == "b2s="


def test_liveness_path_answers_on_every_member(cluster: list[dict[str, int]]) -> None:
    statefulset = find(render(None), "StatefulSet", ETCD)
    liveness = container(statefulset, "etcd")["livenessProbe"]["httpGet"]
    assert liveness["port"] == "metrics"
    for ports in cluster:
        assert call(f"http://127.0.0.1:{ports['metrics']}{liveness['path']}")["health"] == "true"
