"""etcd with user/password auth and with mutual TLS: the client connects with the right credentials only."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from disco_helpers import until

from discovery.embedded import EmbeddedEtcd, find_etcd_binary
from discovery.errors import EtcdAuthFailed, EtcdUnavailable
from discovery.etcd import EtcdClient, TlsConfig
from discovery.ports import free_port
from router.procs import ManagedProcess


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


async def test_mutual_tls(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make test certificates")
    _certs(tmp_path)
    port, peer = free_port(), free_port()
    url = f"https://127.0.0.1:{port}"
    argv = [find_etcd_binary(), "--name", "tls", "--data-dir", str(tmp_path / "data"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls",
            f"http://127.0.0.1:{peer}", "--initial-cluster", f"tls=http://127.0.0.1:{peer}",
            "--cert-file", str(tmp_path / "server.pem"), "--key-file", str(tmp_path / "server.key"),
            "--client-cert-auth", "--trusted-ca-file", str(tmp_path / "ca.pem"),
            "--heartbeat-interval", "10", "--election-timeout", "100", "--log-level", "error"]
    proc = ManagedProcess(argv, log_path=tmp_path / "etcd.log").start()
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
