"""s3:// adapters end to end: a real S3 API server (moto, its own process), a real registrar fetching
beside a simulated worker, a real router process loading the local copy and serving through it."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from s3_helpers import S3, adapter_config, adapter_files, tarball

from discovery.ports import free_port, free_ports
from router.core.records import entry_name
from router.localfleet import base_url, sim_worker
from router.procs import ManagedProcess

FAST = {"tick_s": 0.3, "reconcile_s": 0.5, "retry_base_s": 0.1, "retry_max_s": 0.5}


def _config(adapters: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {"security": {"allowed_schemes": ["file", "s3"], "allowed_source_prefixes": ["s3://adapters/"]},
            "control": FAST, "timeouts": {"cold_start_timeout_s": 10},
            "adapters": [{**a, "base_model": "sim-base"} for a in adapters or []]}


def _call(url: str, body: dict[str, Any] | None = None, method: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _served(router: str, model: str) -> bool:
    return _call(router + "/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 2})[0] == 200


def _roots(worker: str) -> dict[str, str]:
    """adapter -> the path the worker loaded it from (vLLM's `root` in /v1/models)."""
    _, listing = _call(worker + "/v1/models")
    return {m["id"]: m["root"] for m in listing["data"] if m.get("parent")}


def _fetch_metrics(port: int) -> dict[str, float]:
    """The registrar's fetcher metrics (unlabelled series) from its /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {name: float(value) for line in text.splitlines() if line and not line.startswith("#")
            and "{" not in line for name, value in [line.rsplit(" ", 1)]}


def local_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_s3_adapter_is_fetched_beside_the_worker_and_served_then_reused_after_a_restart(
        tmp_path: Path, s3: S3, start_workers: Callable, start_router: Callable, start_registrar: Callable,
        poll_until: Callable) -> None:
    source = s3.upload_dir(adapter_files(tmp_path / "src", "a1"), "team/a1")
    worker = start_workers(1, extra_args=("--speed", "0.01"))[0]
    url = base_url(worker)
    cache = tmp_path / "cache"
    first_port, second_port = free_ports(2)
    registrar = start_registrar(url, cache, "--allow-source", "s3://adapters/", "--metrics-port", str(first_port),
                                "--metrics-host", "127.0.0.1")
    router = start_router(_config([{"name": "a1", "source": source}]), ready=False)

    poll_until(lambda: _served(router.url, "a1"), timeout_s=30, what="the s3 adapter served through the router")
    local = cache / entry_name(source)
    assert _roots(url)["a1"] == str(local), "the worker must load the local copy, not the s3:// URI"
    assert (local / "adapter_config.json").read_bytes() == (tmp_path / "src/a1/adapter_config.json").read_bytes()
    assert (local / "adapter_model.safetensors").stat().st_size == 64 * 1024
    assert list((cache / ".tmp").iterdir()) == []
    first = _fetch_metrics(first_port)
    assert first["lora_router_fetch_cache_misses_total"] == 1 and first["lora_router_fetch_cache_hits_total"] == 0
    assert first["lora_router_fetch_bytes_total"] == local_bytes(local)
    assert first["lora_router_fetch_download_seconds_count"] == 1
    assert first["lora_router_fetch_cache_bytes"] == local_bytes(local)

    # Restart the worker and its registrar; the object is gone from S3, so only the cache can serve it.
    s3.delete_prefix("team/a1")
    registrar.kill()
    worker.kill()
    again = sim_worker(tmp_path, port=int(url.rsplit(":", 1)[1]), extra_args=("--speed", "0.01")).start()
    try:
        _after_restart(tmp_path, url, local, router.url, registrar, start_registrar, poll_until, second_port)
    finally:
        again.kill()


def _after_restart(tmp_path: Path, url: str, local: Path, router: str, registrar: ManagedProcess,
                   start_registrar: Callable, poll_until: Callable, second_port: int) -> None:
    restarted = start_registrar(url, tmp_path / "cache", "--allow-source", "s3://adapters/", "--metrics-port",
                                str(second_port), "--metrics-host", "127.0.0.1")
    poll_until(lambda: "registered worker" in restarted.log_path.read_text(), timeout_s=30,
               what="the restarted registrar registered the worker")
    poll_until(lambda: _roots(url).get("a1") == str(local), timeout_s=30,
               what="the restarted worker re-loaded a1 from the cache")
    assert _served(router, "a1")
    log = restarted.log_path.read_text()
    assert "1 entries" in log and ": fetched s3:" not in log and "fetch of" not in log, log
    # The router may load the published entry before the fetcher's own pass counts it as a hit.
    poll_until(lambda: _fetch_metrics(second_port)["lora_router_fetch_cache_hits_total"] == 1, timeout_s=30,
               what="the restarted fetcher counted its cache hit")
    second = _fetch_metrics(second_port)
    assert second["lora_router_fetch_cache_misses_total"] == 0
    assert second["lora_router_fetch_bytes_total"] == 0
    assert "test-secret-never-logged" not in log + registrar.log_path.read_text()


def test_eviction_under_a_small_bound_spares_what_the_worker_holds(
        tmp_path: Path, s3: S3, start_workers: Callable, start_router: Callable, start_registrar: Callable,
        poll_until: Callable) -> None:
    sources = {n: s3.upload_dir(adapter_files(tmp_path / "src", n), f"team/{n}") for n in ("a", "b", "c")}
    worker = start_workers(1, extra_args=("--speed", "0.01", "--max-cpu-loras", "8"))[0]
    url = base_url(worker)
    cache = tmp_path / "cache"
    # Room for two 64 KiB adapters, not three.
    start_registrar(url, cache, "--cache-bytes", str(160 * 1024), "--max-adapter-bytes", str(100 * 1024),
                    "--cache-pin-s", "0")
    # `a` is registered through the API, not the config: only such an adapter may be deleted (409 otherwise).
    router = start_router(_config([{"name": "b", "source": sources["b"]}]), ready=False)
    status, _ = _call(router.url + "/v1/loras", {"lora_name": "a", "source": {"uri": sources["a"]},
                                                 "base_model": "sim-base"})
    assert status == 201
    poll_until(lambda: _served(router.url, "a") and _served(router.url, "b"), timeout_s=30, what="a and b served")

    status, _ = _call(router.url + "/v1/loras", {"lora_name": "c", "source": {"uri": sources["c"]},
                                                 "base_model": "sim-base"})
    assert status == 201
    # c must wait: a and b are held (pinned). Dropping a from the catalog unpins it; c then takes its room.
    status, _ = _call(router.url + "/v1/loras/a", method="DELETE")
    assert status == 200
    poll_until(lambda: _served(router.url, "c"), timeout_s=30, what="c served after a was evicted")
    entries = {p.name for p in cache.iterdir() if not p.name.startswith(".")}
    assert entries == {entry_name(sources["b"]), entry_name(sources["c"])}
    assert _roots(url).keys() == {"b", "c"}
    assert _served(router.url, "b")


@pytest.mark.parametrize(("key", "body", "reason"), [
    ("bad/partial.tar.gz", tarball({"adapter_config.json": adapter_config(),
                                    "adapter_model.safetensors": b"w" * 40_000})[:-2000], "corrupt_archive"),
    ("bad/escape.tar.gz", tarball({"adapter_config.json": adapter_config(), "../../escaped": b"x"}),
     "unsafe_archive"),
    ("bad/link.tar.gz", tarball({"adapter_config.json": adapter_config()}, symlink=("weights", "/etc/passwd")),
     "unsafe_archive"),
    ("bad/config.tar.gz", tarball({"adapter_config.json": b"{not json"}), "bad_adapter"),
    ("bad/rank.tar.gz", tarball({"adapter_config.json": adapter_config(rank=64)}), "rank_too_high"),
])
def test_a_bad_object_is_refused_with_its_reason_in_the_catalog(
        tmp_path: Path, s3: S3, start_workers: Callable, start_router: Callable, start_registrar: Callable,
        poll_until: Callable, key: str, body: bytes, reason: str) -> None:
    source = s3.put(key, body)
    worker = start_workers(1, extra_args=("--speed", "0.01"))[0]
    cache = tmp_path / "cache"
    port = free_port()
    start_registrar(base_url(worker), cache, "--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    router = start_router(_config([{"name": "bad", "source": source}]), ready=False)

    def failure() -> dict[str, Any] | None:
        """The worker's failure once it is final (while the fetch runs, it reads "still being fetched")."""
        _, view = _call(router.url + "/v1/loras/bad")
        return next((f for f in view.get("failures", {}).values() if f["permanent"]), None)

    got = poll_until(failure, timeout_s=30, what="the fetch failure in the catalog")
    assert got["reason"] == "fetch_failed" and got["permanent"], got
    assert reason in got["detail"] and source in got["detail"], got
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert f'lora_router_fetch_failures_total{{reason="{reason}"}} 1.0' in r.read().decode()
    assert [p.name for p in cache.iterdir()] == [".tmp"] and list((cache / ".tmp").iterdir()) == []
    assert not (tmp_path / "escaped").exists() and not (cache.parent / "escaped").exists()
    status, error = _call(router.url + "/v1/completions", {"model": "bad", "prompt": "hi", "max_tokens": 2})
    assert status == 503 and error["error"]["type"], (status, error)


def test_registrar_without_a_cache_leaves_s3_sources_refused_with_a_reason(
        tmp_path: Path, start_workers: Callable, start_router: Callable, etcd: Any, poll_until: Callable) -> None:
    """Without --cache-dir the router does not send an s3:// URI vLLM cannot read: it says why."""
    from router.procs import python_cli

    worker = start_workers(1)[0]
    proc = ManagedProcess(python_cli("router", "register", "--etcd", etcd.endpoint, "--worker-url",
                                     base_url(worker), "--ttl", "3"), log_path=tmp_path / "reg.log").start()
    try:
        router = start_router(_config([{"name": "x", "source": "s3://adapters/team/x"}]), ready=False)
        got = poll_until(lambda: next(iter(_call(router.url + "/v1/loras/x")[1].get("failures", {}).values()),
                                      None), timeout_s=20, what="a failure for x")
        assert got["permanent"]
        assert got["reason"] == "no_fetcher" and "--cache-dir" in got["detail"], got
    finally:
        proc.kill()


def test_first_requests_for_a_new_s3_adapter_wait_for_its_download_instead_of_failing(
        tmp_path: Path, s3: S3, start_workers: Callable, start_router: Callable, start_registrar: Callable) -> None:
    """Cold start: the requests that arrive while the worker's fetcher downloads wait (one shared load, at
    most cold_start_timeout_s) and are answered, not turned away with a 503."""
    from concurrent.futures import ThreadPoolExecutor

    source = s3.upload_dir(adapter_files(tmp_path / "src", "cold", weights=2 << 20), "team/cold")
    worker = start_workers(1, extra_args=("--speed", "0.01"))[0]
    port = free_port()
    start_registrar(base_url(worker), tmp_path / "cache", "--metrics-port", str(port), "--metrics-host",
                    "127.0.0.1")
    router = start_router(_config())
    for name in ("cold", "cold-twin"):  # two names, one source: one cache entry, one download
        status, _ = _call(router.url + "/v1/loras", {"lora_name": name, "source": {"uri": source},
                                                     "base_model": "sim-base"})
        assert status == 201
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: _call(router.url + "/v1/completions", {
            "model": ("cold", "cold-twin")[i % 2], "prompt": "hi", "max_tokens": 2}), range(4)))
    assert [code for code, _ in answers] == [200] * 4, answers
    roots = _roots(base_url(worker))
    assert roots["cold"] == roots["cold-twin"] == str(tmp_path / "cache" / entry_name(source))
    metrics = _fetch_metrics(port)
    assert metrics["lora_router_fetch_download_seconds_count"] == 1
    assert metrics["lora_router_fetch_bytes_total"] == local_bytes(tmp_path / "src" / "cold")


def test_a_cold_start_goes_to_the_worker_that_has_the_adapter_cached(
        tmp_path: Path, s3: S3, start_workers: Callable, start_router: Callable, start_registrar: Callable,
        poll_until: Callable) -> None:
    """With no replica placed (min_replicas 0), the first request loads the adapter on its best-ranked
    worker; the one that already has it on disk beats the HRW-first one that would have to download."""
    from allocator.hrw import rank_workers
    from allocator.model import Worker
    from discovery.records import worker_id_for

    source = s3.upload_dir(adapter_files(tmp_path / "src", "warm"), "team/warm")
    urls = [base_url(w) for w in start_workers(2, extra_args=("--speed", "0.01"))]
    ranked = [w.id for w in rank_workers("warm", [Worker(id=worker_id_for(u), base_model="sim-base") for u in urls])]
    second = next(u for u in urls if worker_id_for(u) == ranked[1])
    for url in urls:  # the second-ranked worker's cache already holds the adapter (e.g. from an earlier run)
        cache = tmp_path / f"cache-{url.rsplit(':', 1)[1]}"
        if url == second:
            shutil.copytree(tmp_path / "src" / "warm", cache / entry_name(source))
        start_registrar(url, cache)
    config = {**_config([{"name": "warm", "source": source}]), "placement": {"defaults": {"min_replicas": 0}}}
    router = start_router(config)
    poll_until(lambda: len(_call(router.url + "/v1/router/status")[1]["workers"]) == 2, timeout_s=20,
               what="both workers known")
    req = urllib.request.Request(router.url + "/v1/completions", method="POST",
                                 data=json.dumps({"model": "warm", "prompt": "hi", "max_tokens": 2}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as reply:
        assert reply.status == 200
        assert reply.headers["x-lora-router-worker"] == worker_id_for(second)
    assert "warm" in _roots(second) and all("warm" not in _roots(u) for u in urls if u != second)


def test_the_fetcher_refuses_a_source_outside_its_allow_list(
        tmp_path: Path, s3: S3, start_workers: Callable, start_router: Callable, start_registrar: Callable,
        poll_until: Callable) -> None:
    """The worker side keeps its own allow-list (--allow-source): a catalog written by a laxer router
    still cannot make it download from anywhere."""
    source = s3.upload_dir(adapter_files(tmp_path / "src", "elsewhere"), "other-team/elsewhere")
    worker = start_workers(1)[0]
    start_registrar(base_url(worker), tmp_path / "cache", "--allow-source", "s3://adapters/team/")
    router = start_router(_config([{"name": "elsewhere", "source": source}]), ready=False)
    got = poll_until(lambda: next((f for f in _call(router.url + "/v1/loras/elsewhere")[1].get("failures", {})
                                   .values() if f["permanent"]), None), timeout_s=30, what="the refusal")
    assert got["reason"] == "fetch_failed" and "not_allowed" in got["detail"], got
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".tmp"]
