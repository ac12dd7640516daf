"""etcd with user/password auth and with mutual TLS: the client connects with the right credentials only,
and a whole fleet (router, registrar, status) runs on an etcd that asks for both."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from disco_helpers import until

from discovery.embedded import EmbeddedEtcd, find_etcd_binary
from discovery.errors import EtcdAuthFailed, EtcdUnavailable
from discovery.etcd import EtcdClient, TlsConfig
from discovery.ports import free_port, free_ports
from router.localfleet import base_url
from router.procs import ManagedProcess, python_cli


def _etcdctl(endpoint: str, *args: str) -> None:
    etcdctl = str(Path(find_etcd_binary()).with_name("etcdctl"))
    subprocess.run([etcdctl, "--endpoints", endpoint, *args], check=True, capture_output=True, timeout=20)


class ShortTokenEtcd(EmbeddedEtcd):
    """Auth tokens that expire after 1 s idle, so a test can see the client log in again."""

    def command(self) -> list[str]:
        return [*super().command(), "--auth-token-ttl", "1"]


async def test_user_password_auth(tmp_path: Path) -> None:
    if not Path(find_etcd_binary()).with_name("etcdctl").exists():
        pytest.skip("no etcdctl beside the etcd binary")
    etcd = ShortTokenEtcd(tmp_path / "data")
    etcd.start()
    try:
        _etcdctl(etcd.endpoint, "user", "add", "root", "--new-user-password=s3cret", "--interactive=false")
        _etcdctl(etcd.endpoint, "auth", "enable")
        client = await EtcdClient.connect([etcd.endpoint], prefix="/t", user="root", password="s3cret")
        try:
            await client.put("k", b"v")
            assert (await client.get("k")).value == b"v"
            await asyncio.sleep(2.5)  # idle past the token TTL: time-based behaviour under test, not a sync
            with pytest.raises(EtcdUnavailable, match="authenticating again"):
                await client.get("k")  # retryable, not an auth failure: the credentials are still good
            assert (await client.get("k")).value == b"v"
        finally:
            await client.close()
        with pytest.raises(EtcdAuthFailed):
            await EtcdClient.connect([etcd.endpoint], prefix="/t", user="root", password="wrong")
        with pytest.raises(EtcdAuthFailed):
            await EtcdClient.connect([etcd.endpoint], prefix="/t")
    finally:
        etcd.kill()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=cwd, timeout=60)


def _certs(d: Path) -> None:
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=test-ca", cwd=d)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext", cwd=d)


def _tls_etcd(d: Path) -> tuple[ManagedProcess, str]:
    """A started etcd that serves only TLS clients presenting a certificate signed by the test CA."""
    _certs(d)
    port, peer = free_ports(2)
    url = f"https://127.0.0.1:{port}"
    argv = [find_etcd_binary(), "--name", "tls", "--data-dir", str(d / "data"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}", "--initial-cluster", f"tls=http://127.0.0.1:{peer}",
            "--cert-file", str(d / "server.pem"), "--key-file", str(d / "server.key"),
            "--client-cert-auth", "--trusted-ca-file", str(d / "ca.pem"),
            "--heartbeat-interval", "10", "--election-timeout", "100", "--log-level", "error"]
    return ManagedProcess(argv, log_path=d / "etcd.log").start(), url


async def test_mutual_tls(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    proc, url = _tls_etcd(tmp_path)
    tls = TlsConfig(ca_file=str(tmp_path / "ca.pem"), cert_file=str(tmp_path / "client.pem"),
                    key_file=str(tmp_path / "client.key"))
    try:
        async def connected() -> EtcdClient | None:
            try:
                return await EtcdClient.connect([url], prefix="/t", tls=tls, timeout_s=1.0)
            except EtcdUnavailable:
                return None

        client = await until(connected, 15, "etcd over mutual TLS")
        try:
            await client.put("k", b"v")
            assert (await client.get("k")).value == b"v"
        finally:
            await client.close()
        with pytest.raises((EtcdUnavailable, EtcdAuthFailed)):  # no client certificate: refused
            await EtcdClient.connect([url], prefix="/t", tls=TlsConfig(ca_file=str(tmp_path / "ca.pem")),
                                     timeout_s=1.0)
    finally:
        proc.kill()


def _etcdctl_answers(endpoint: str, *args: str) -> bool:
    try:
        _etcdctl(endpoint, *args)
    except subprocess.CalledProcessError:
        return False
    return True


def _completion(router: str, model: str) -> int:
    body = json.dumps({"model": model, "prompt": "x", "max_tokens": 2}).encode()
    req = urllib.request.Request(router + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_routers_and_registrars_on_a_tls_and_password_etcd_route_requests(
        tmp_path: Path, start_workers: Callable, adapter_dirs: Callable, poll_until: Callable) -> None:
    """Every way to give the etcd settings, one per process: the router reads its config's etcd: section
    (endpoint from the environment), the registrar takes flags, `status` only environment variables."""
    if shutil.which("openssl") is None or not Path(find_etcd_binary()).with_name("etcdctl").exists():
        pytest.skip("openssl and etcdctl are needed for a TLS + password etcd")
    etcd, url = _tls_etcd(tmp_path)
    ca, cert, key = (str(tmp_path / f) for f in ("ca.pem", "client.pem", "client.key"))
    ctl_tls = ("--cacert", ca, "--cert", cert, "--key", key)
    procs = [etcd]
    try:
        poll_until(lambda: _etcdctl_answers(url, *ctl_tls, "endpoint", "health"), timeout_s=15, what="etcd up")
        _etcdctl(url, *ctl_tls, "user", "add", "root", "--new-user-password=s3cret", "--interactive=false")
        _etcdctl(url, *ctl_tls, "auth", "enable")
        password_file = tmp_path / "etcd-password"
        password_file.write_text("s3cret\n")
        root = adapter_dirs("secure").parent
        worker = base_url(start_workers(1, extra_args=("--speed", "0.01"))[0])
        procs.append(ManagedProcess(
            python_cli("router", "register", "--etcd", url, "--etcd-ca", ca, "--etcd-cert", cert, "--etcd-key", key,
                       "--etcd-user", "root", "--etcd-password-file", str(password_file),
                       "--worker-url", worker, "--worker-id", "secure-worker", "--ttl", "3"),
            log_path=tmp_path / "registrar.log").start())
        config = {"etcd": {"ca_file": ca, "cert_file": cert, "key_file": key, "user": "root",
                           "password_file": str(password_file)},
                  "security": {"allowed_path_prefixes": [str(root)]}, "control": {"tick_s": 0.3, "reconcile_s": 0.5},
                  "adapters": [{"name": "secure", "source": str(root / "secure"), "base_model": "sim-base"}]}
        (tmp_path / "router.yaml").write_text(json.dumps(config))
        port = free_port()
        procs.append(ManagedProcess(
            python_cli("router", "serve", "--config", str(tmp_path / "router.yaml"), "--port", str(port)),
            env={"LORA_ROUTER_ETCD": url}, health_url=f"http://127.0.0.1:{port}/ready",
            log_path=tmp_path / "router.log").start(timeout_s=60))
        poll_until(lambda: _completion(f"http://127.0.0.1:{port}", "secure") == 200, timeout_s=20,
                   what="a request routed through the router on the secured etcd")

        env = {"LORA_ROUTER_ETCD": url, "LORA_ROUTER_ETCD_CA": ca, "LORA_ROUTER_ETCD_CERT": cert,
               "LORA_ROUTER_ETCD_KEY": key, "LORA_ROUTER_ETCD_USER": "root",
               "LORA_ROUTER_ETCD_PASSWORD_FILE": str(password_file)}
        status = subprocess.run(python_cli("router", "status", "--json"), env={**os.environ, **env},
                                capture_output=True, text=True, timeout=30, check=False)
        assert status.returncode == 0, status.stderr
        assert [w["id"] for w in json.loads(status.stdout)["workers"]] == ["secure-worker"]
        assert "s3cret" not in (tmp_path / "router.log").read_text() + (tmp_path / "registrar.log").read_text()

        wrong = tmp_path / "wrong-password"
        wrong.write_text("not-the-password\n")
        refused = subprocess.run(python_cli("router", "serve", "--port", str(free_port()), "--etcd", url,
                                            "--etcd-ca", ca, "--etcd-cert", cert, "--etcd-key", key,
                                            "--etcd-user", "root", "--etcd-password-file", str(wrong)),
                                 capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 2, refused.stderr
        assert "Traceback" not in refused.stderr and "credentials" in refused.stderr, refused.stderr
        assert "not-the-password" not in refused.stderr
    finally:
        for proc in reversed(procs):
            proc.kill()
