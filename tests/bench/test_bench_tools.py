"""The measuring tools themselves: wrk output parsing, process-tree CPU, the worker profile's model."""

from __future__ import annotations

import subprocess
import sys

from bench.commands.worker_profile import simulate
from bench.perfmodel import PerfParams
from bench.proxybench import parse_wrk, tree_cpu_s

WRK = """Running 3s test @ http://127.0.0.1:1/v1/completions
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     9.69ms    2.01ms  30.00ms   80.00%
  Latency Distribution
     50%    9.69ms
     75%   11.00ms
     90%   13.00ms
     99%  850.00us
  19689 requests in 3.00s, 10.00MB read
Requests/sec:   6563.10
Transfer/sec:      3.33MB
"""


def test_wrk_output_is_parsed_with_units() -> None:
    assert parse_wrk(WRK) == (19689, 6563.10, 9.69, 0.85)


def test_process_tree_cpu_counts_children() -> None:
    burn = "import subprocess,sys; subprocess.run([sys.executable,'-c','sum(range(30_000_000))'])"
    proc = subprocess.Popen([sys.executable, "-c", burn + "; input()"], stdin=subprocess.PIPE)
    try:
        before = tree_cpu_s(proc.pid)
        import time

        deadline = time.monotonic() + 30
        while tree_cpu_s(proc.pid) - before < 0.2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree_cpu_s(proc.pid) - before >= 0.2
    finally:
        proc.kill()
        proc.wait()


def test_more_adapters_than_slots_costs_swaps_and_throughput() -> None:
    params = PerfParams(max_loras=4, max_cpu_loras=8)
    fits = simulate(params, 16, 4, 200, 64, 16)
    spills = simulate(params, 16, 8, 200, 64, 16)
    assert spills["slot_swaps"] > fits["slot_swaps"]
    assert spills["req_per_s"] < fits["req_per_s"]
    assert simulate(params, 16, 4, 200, 64, 16) == fits, "virtual time is deterministic"
