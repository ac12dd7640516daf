"""An s3:// adapter through real vLLM: a real S3 API server (moto), the registrar fetching beside a real
vLLM worker, the router loading the worker's local copy; the output equals the same adapter loaded
straight from its directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from control.control_helpers import until
from openai_calls import bearer, call, greedy_text
from sources.s3_helpers import CREDENTIALS, moto_server
from vllm_backend import TinyModel

from discovery.embedded import EmbeddedEtcd
from router.core.records import entry_name
from router.localfleet import base_url
from router.procs import ManagedProcess, python_cli

pytestmark = [pytest.mark.real_vllm, pytest.mark.timeout(400)]

WORKER_KEY = "real-worker-secret-s3-7b2e"
SETTLE_S = 90.0


async def test_s3_adapter_served_by_real_vllm_equals_the_direct_file_load(
        start_vllm_workers: Callable[..., list[ManagedProcess]], start_router: Callable[..., Any],
        etcd: EmbeddedEtcd, tiny_model: TinyModel, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    local = tiny_model.make_adapter(root, "direct")
    key_file = tmp_path / "worker.key"
    key_file.write_text(WORKER_KEY + "\n")
    cache = tmp_path / "cache"
    with moto_server(tmp_path) as s3:
        source = s3.upload_dir(local, "real/direct")
        worker = start_vllm_workers(1, api_key=WORKER_KEY)[0]
        url = base_url(worker)
        registrar = ManagedProcess(
            python_cli("router", "register", "--etcd", etcd.endpoint, "--worker-url", url, "--api-key-file",
                       str(key_file), "--max-lora-rank", "8", "--ttl", "3", "--health-interval", "0.5",
                       "--cache-dir", str(cache), "--s3-endpoint-url", s3.endpoint, "--allow-source",
                       "s3://adapters/real/"),
            env=CREDENTIALS, log_path=tmp_path / "registrar.log").start()
        try:
            config = {"security": {"allowed_path_prefixes": [str(root)], "allowed_schemes": ["file", "s3"],
                                   "allowed_source_prefixes": ["s3://adapters/real/"]},
                      "control": {"tick_s": 0.5, "reconcile_s": 1.0, "lease_ttl_s": 3},
                      "worker_api_key_file": str(key_file)}
            router = start_router(config)
            for name, path in (("from-s3", source), ("from-file", str(local))):
                reply = await call("POST", f"{router.url}/v1/load_lora_adapter",
                                   {"lora_name": name, "lora_path": path})
                assert reply.status == 200, reply.text

            async def loaded() -> dict[str, Any] | None:
                reply = await call("GET", f"{url}/v1/models", headers=bearer(WORKER_KEY))
                cards = {c["id"]: c for c in reply.json()["data"]} if reply.status == 200 else {}
                return cards if {"from-s3", "from-file"} <= cards.keys() else None

            cards = await until(loaded, SETTLE_S, "both adapters loaded on the worker")
            assert cards["from-s3"]["root"] == str(cache / entry_name(source))
            prompt = tiny_model.probe_prompt
            via_s3 = await greedy_text(router.url, "from-s3", prompt)
            via_file = await greedy_text(router.url, "from-file", prompt)
            base = await greedy_text(router.url, tiny_model.served_name, prompt)
            assert via_s3 == via_file != base
            assert via_s3.split() == tiny_model.probe_outputs["direct"].split()
            view = await call("GET", f"{router.url}/v1/loras/from-s3")
            assert view.status == 200 and view.json()["failures"] == {}, view.text
            for log in (tmp_path / "registrar.log", router.proc.log_path):
                text = log.read_text(errors="replace")
                assert CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in text and WORKER_KEY not in text
        finally:
            registrar.stop()
