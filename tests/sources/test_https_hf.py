"""https:// tarballs from a real local TLS server, and hf:// at the huggingface_hub boundary, each through
a real registrar process and a real router process."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import pytest
from s3_helpers import adapter_config, self_signed, tarball
from test_s3_fetch import _call, _roots, _served

from discovery.embedded import EmbeddedEtcd
from discovery.fetch.sources import SourceSettings, download
from discovery.ports import free_port
from router.core.records import entry_name
from router.localfleet import base_url
from router.procs import ManagedProcess, python_cli

FAST = {"tick_s": 0.3, "reconcile_s": 0.5, "retry_base_s": 0.1, "retry_max_s": 0.5}


def _registrar(tmp_path: Path, etcd: EmbeddedEtcd, worker: str, env: dict[str, str]) -> ManagedProcess:
    argv = python_cli("router", "register", "--etcd", etcd.endpoint, "--worker-url", worker, "--ttl", "3",
                      "--health-interval", "0.2", "--cache-dir", str(tmp_path / "cache"))
    return ManagedProcess(argv, env=env, log_path=tmp_path / "registrar.log").start()


def _final_failure(router: str, name: str) -> dict[str, Any] | None:
    _, view = _call(f"{router}/v1/loras/{name}")
    return next((f for f in view.get("failures", {}).values() if f["permanent"]), None)


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """(base URL, directory it serves, CA file that trusts it)."""
    served = tmp_path / "www"
    served.mkdir()
    cert, key = self_signed(tmp_path)
    port = free_port()
    script = Path(__file__).with_name("https_files.py")
    import sys
    proc = ManagedProcess([sys.executable, str(script), "--dir", str(served), "--port", str(port), "--cert",
                           str(cert), "--key", str(key)], log_path=tmp_path / "https.log").start()
    try:
        yield f"https://127.0.0.1:{port}", served, cert
    finally:
        proc.kill()


def test_https_tarball_is_fetched_checked_and_served_a_wrong_digest_is_refused(
        tmp_path: Path, etcd: EmbeddedEtcd, https_server: tuple[str, Path, Path], start_workers: Callable,
        start_router: Callable, poll_until: Callable) -> None:
    base, served, ca = https_server
    body = tarball({"adapter/adapter_config.json": adapter_config(), "adapter/adapter_model.bin": b"w" * 5000})
    (served / "good.tar.gz").write_bytes(body)
    (served / "tampered.tar.gz").write_bytes(body)
    good = f"{base}/good.tar.gz#sha256={hashlib.sha256(body).hexdigest()}"
    tampered = f"{base}/tampered.tar.gz#sha256={'0' * 64}"
    worker = base_url(start_workers(1, extra_args=("--speed", "0.01"))[0])
    registrar = _registrar(tmp_path, etcd, worker, {"SSL_CERT_FILE": str(ca)})
    try:
        config = {"security": {"allowed_schemes": ["https"], "allowed_source_prefixes": [base + "/"]},
                  "control": FAST, "adapters": [{"name": "good", "source": good, "base_model": "sim-base"},
                                                {"name": "tampered", "source": tampered, "base_model": "sim-base"}]}
        router = start_router(config, ready=False)
        poll_until(lambda: _served(router.url, "good"), timeout_s=30, what="the https adapter served")
        local = tmp_path / "cache" / entry_name(good)
        assert _roots(worker)["good"] == str(local)
        assert sorted(p.name for p in local.iterdir()) == ["adapter_config.json", "adapter_model.bin"]
        got = poll_until(lambda: _final_failure(router.url, "tampered"), timeout_s=30, what="tampered refused")
        assert got["reason"] == "fetch_failed" and "checksum_mismatch" in got["detail"], got
    finally:
        registrar.kill()


class _HubRecorder(BaseHTTPRequestHandler):
    """Answers every Hub API call with the Hub's own 'repository not found'; records what was asked."""

    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error": "Repository not found"}')

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


def test_hf_source_goes_through_huggingface_hub_to_its_configured_endpoint(
        tmp_path: Path, etcd: EmbeddedEtcd, start_workers: Callable, start_router: Callable,
        poll_until: Callable) -> None:
    """Boundary test: no local Hub exists to point huggingface_hub at, so HF_ENDPOINT names a socket that
    records the library's first call and answers with the Hub's not-found; the registrar's real
    huggingface_hub must ask for the record's repo at its revision, and the refusal reaches the catalog."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HubRecorder)
    _HubRecorder.asked = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        worker = base_url(start_workers(1)[0])
        registrar = _registrar(tmp_path, etcd, worker, {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
                                                        "HF_HUB_DISABLE_TELEMETRY": "1"})
        try:
            config = {"security": {"allowed_schemes": ["hf"], "allowed_source_prefixes": ["hf://my-org/"]},
                      "control": FAST, "adapters": [{"name": "h", "source": "hf://my-org/my-lora@v2",
                                                     "base_model": "sim-base"}]}
            router = start_router(config, ready=False)
            got = poll_until(lambda: _final_failure(router.url, "h"), timeout_s=30, what="the hf refusal")
            assert got["reason"] == "fetch_failed" and "not_found" in got["detail"], got
            assert any("my-org/my-lora" in path and "v2" in path for path in _HubRecorder.asked), \
                _HubRecorder.asked
        finally:
            registrar.kill()
    finally:
        server.shutdown()


async def test_hf_download_call_names_repo_revision_and_the_staging_dir(tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def snapshot(**kwargs: Any) -> str:
        calls.append(kwargs)
        (Path(kwargs["local_dir"]) / ".cache").mkdir()
        (Path(kwargs["local_dir"]) / "adapter_config.json").write_bytes(adapter_config())
        return str(kwargs["local_dir"])

    staging = tmp_path / "staging"
    staging.mkdir()
    async with aiohttp.ClientSession() as session:
        await download("hf://org/repo@abc123", staging, SourceSettings(), 1 << 20, session, hf_download=snapshot)
    assert calls == [{"repo_id": "org/repo", "revision": "abc123", "local_dir": str(staging)}]
    assert [p.name for p in staging.iterdir()] == ["adapter_config.json"]
