"""The measuring tools of `lora-bench proxy`: wrk's report read back, process-tree CPU, pinning, medians."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.proxybench.cputime import tree_cpu_s
from bench.proxybench.load import LoadResult
from bench.proxybench.measure import Sample
from bench.proxybench.pinning import pinned
from bench.proxybench.report import medians, table
from bench.proxybench.wrk import WrkOutputUnreadable, parse_wrk
from router.waiting import wait_until

WRK = """Running 3s test @ http://127.0.0.1:1/v1/completions
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     9.69ms    2.01ms  30.00ms   80.00%
  Latency Distribution
     50%  950.00us
     75%   11.00ms
     90%   13.00ms
     99%    1.20s
  19689 requests in 3.00s, 10.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:   6563.10
Transfer/sec:      3.33MB
"""


def test_wrk_report_is_read_with_units_and_errors() -> None:
    got = parse_wrk(WRK)
    assert (got.requests, got.errors, got.seconds, got.rps, got.p99_ms) == (19689, 8, 3.0, 6563.10, 1200.0)
    assert math.isclose(got.p50_ms, 0.95)


def test_a_clean_wrk_report_has_no_errors() -> None:
    clean = WRK.replace("  Socket errors: connect 0, read 2, write 0, timeout 1\n", "").replace(
        "  Non-2xx or 3xx responses: 5\n", "")
    assert parse_wrk(clean).errors == 0


def test_anything_but_a_wrk_report_is_an_error() -> None:
    with pytest.raises(WrkOutputUnreadable):
        parse_wrk("wrk: invalid option -- 'x'\nUsage: wrk <options> <url>")


def _own_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_process_tree_cpu_counts_live_children() -> None:
    """An idle parent whose child burns CPU: the tree's CPU grows, the parent's own does not."""
    burn = "import subprocess,sys; subprocess.run([sys.executable,'-c','while True: pass'])"
    parent = subprocess.Popen([sys.executable, "-c", burn], start_new_session=True)
    try:
        wait_until(lambda: tree_cpu_s(parent.pid) - _own_cpu_s(parent.pid) >= 0.3, timeout_s=30,
                   what="the child's CPU in the tree")
        children_cpu = tree_cpu_s(parent.pid) - _own_cpu_s(parent.pid)
        assert children_cpu >= 0.3
        assert _own_cpu_s(parent.pid) < children_cpu
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_a_gone_process_has_no_cpu() -> None:
    assert tree_cpu_s(2**22 + 1) == 0.0, "beyond the kernel's largest pid"


@pytest.mark.parametrize("path", [None, "/nonexistent"], ids=["taskset", "exec-wrapper"])
def test_pinned_child_runs_on_its_core_from_the_start(path: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    core = max(os.sched_getaffinity(0))
    if path is not None:
        monkeypatch.setenv("PATH", path)
    argv = pinned([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], core)
    assert (argv[0] == "taskset") == (path is None)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert out.strip() == str([core])


def _sample(target: str, mode: str, cpu: float | None, p50: float, rps: float = 100.0) -> Sample:
    load = LoadResult(requests=int(rps), errors=0, seconds=1.0, rps=rps, p50_ms=p50, p99_ms=2 * p50)
    return Sample(target=target, mode=mode, concurrency=1, load=load, cpu_us_per_request=cpu)


def test_medians_compare_each_proxy_with_nginx_and_vllm_router() -> None:
    samples = [
        _sample("direct", "plain", None, 0.2), _sample("direct", "plain", None, 0.4),
        _sample("direct", "plain", None, 0.3),
        _sample("nginx", "plain", 50, 0.5), _sample("nginx", "plain", 70, 0.6), _sample("nginx", "plain", 60, 0.7),
        _sample("vllm-router", "plain", 120, 0.8), _sample("vllm-router", "plain", 300, 0.9),
        _sample("vllm-router", "plain", 100, 1.0),
        _sample("lora-router", "plain", 180, 1.3),
    ]
    rows = {r.target: r for r in medians(samples)}
    assert rows["nginx"].cpu_us_per_request == 60
    assert rows["vllm-router"].cpu_us_per_request == 120
    assert rows["lora-router"].cpu_ratio == {"nginx": 3.0, "vllm-router": 1.5}
    assert rows["vllm-router"].cpu_ratio == {"nginx": 2.0, "vllm-router": 1.0}
    assert rows["direct"].cpu_ratio == {} and rows["direct"].added_p50_ms is None
    assert math.isclose(rows["lora-router"].added_p50_ms or 0, 1.0)
    assert rows["nginx"].reps == 3 and rows["lora-router"].reps == 1
    text = table(list(rows.values()), markdown=True)
    assert "| plain | 1 | lora-router | 100 | 1.30 | 2.60 | +1.00 | 180 | 3.00 | 1.50 | 0 |" in text


def test_without_references_the_ratios_are_left_blank() -> None:
    rows = medians([_sample("direct", "stream", None, 0.3), _sample("lora-router", "stream", 400, 0.8)])
    assert [r.cpu_ratio for r in rows] == [{}, {}]
    assert "–" in table(rows).splitlines()[-1]
