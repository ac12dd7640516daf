"""`lora-bench proxy` for real: processes started, load sent, CPU read, everything stopped."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from bench.proxybench.load import ADAPTER, PATH, LoadResult, request_body
from bench.proxybench.pyload import drive
from bench.proxybench.targets import nginx_binary
from router.localfleet import base_url
from router.procs import ManagedProcess, python_cli


def test_python_load_generator_counts_answers_and_errors(start_workers: Callable[..., list[ManagedProcess]],
                                                         adapter_dirs: Callable[..., Path]) -> None:
    worker = start_workers(1, extra_args=("--speed", "0", "--lora-modules", f"{ADAPTER}={adapter_dirs(ADAPTER)}"))[0]
    url = base_url(worker) + PATH
    for mode in ("plain", "stream", "long"):
        ok = asyncio.run(drive(url, request_body(mode), 4, 0.5))
        assert ok.requests > 0 and ok.errors == 0
        assert ok.p50_ms <= ok.p99_ms
        assert abs(ok.rps * ok.seconds - ok.requests) < 1
    unknown = json.dumps({"model": "no-such-adapter", "prompt": "x", "max_tokens": 1}).encode()
    bad = asyncio.run(drive(url, unknown, 2, 0.3))
    assert bad.requests > 0 and bad.errors == bad.requests


@pytest.mark.slow
def test_quick_run_measures_every_installed_target(tmp_path: Path) -> None:
    out = tmp_path / "proxy.json"
    targets = ["direct", "lora-router"] + (["nginx"] if nginx_binary() else [])
    proc = ManagedProcess(python_cli("bench", "proxy", "--quick", "--concurrency", "4", "--targets",
                                     ",".join(targets), "--json", str(out)), log_path=tmp_path / "bench.log")
    proc.start()
    assert proc.proc is not None
    try:
        assert proc.proc.wait(timeout=100) == 0, (tmp_path / "bench.log").read_text()[-3000:]
    finally:
        proc.stop(timeout_s=5)
    report = json.loads(out.read_text())
    rows = {(r["target"], r["mode"]): r for r in report["medians"]}
    assert set(rows) == {(t, m) for t in targets for m in ("plain", "stream")}
    for (target, _), row in rows.items():
        assert row["requests"] > 0 and row["errors"] == 0
        assert (row["cpu_us_per_request"] is None) == (target == "direct")
        if target != "direct":
            assert row["cpu_us_per_request"] > 0
            assert row["added_p50_ms"] is not None
    for sample in report["samples"]:
        msgspec.convert(sample["load"], LoadResult)
