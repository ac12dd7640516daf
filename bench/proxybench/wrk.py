"""Driving wrk: the Lua script that makes it POST, and its `--latency` report read back."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.proxybench.load import LoadResult

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


class WrkOutputUnreadable(RuntimeError):
    """wrk printed something other than its report (a crash, a usage message)."""


def lua_script(path: Path, body: bytes) -> Path:
    path.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body.decode())}\n'
                    'wrk.headers["Content-Type"] = "application/json"\n')
    return path


def wrk_argv(url: str, script: Path, concurrency: int, seconds: int) -> list[str]:
    """One thread: the load generator shares a core with the worker, a second thread would only contend."""
    return ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), url]


def parse_wrk(text: str) -> LoadResult:
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if done is None or rps is None:
        raise WrkOutputUnreadable(f"not a wrk report: {text[-500:]!r}")
    seconds = float(done.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[done.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, sockets.groups())) if sockets else 0)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
        return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")

    return LoadResult(requests=int(done.group(1)), errors=errors, seconds=seconds, rps=float(rps.group(1)),
                      p50_ms=pct("50"), p99_ms=pct("99"))
