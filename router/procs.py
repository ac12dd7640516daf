"""Child processes that serve HTTP: start, wait until healthy, stop by PID.

Used by `lora-router demo`, the benchmarks and the tests, which all run real
processes (simulated workers, routers, registrars) on loopback ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from router.waiting import NotWithin, wait_until

PR_SET_PDEATHSIG = 1
"""From linux/prctl.h."""
SUPERVISOR_ENV = "LORA_ROUTER_SUPERVISOR_PID"
"""Set by a supervisor in its children's environment: each child calls `die_with_supervisor()`."""


class ProcessStartFailed(RuntimeError):
    """A child exited or never answered its health URL."""


class ManagedProcess:
    """A child in its own session, so that stopping it stops its children too.

    Without `log_path` the child writes to this process's stdout and stderr.
    """

    def __init__(self, argv: Sequence[str], *, health_url: str | None = None,
                 env: Mapping[str, str] | None = None, log_path: str | Path | None = None,
                 cwd: str | Path | None = None) -> None:
        self.argv = list(argv)
        self.health_url = health_url
        self.env = dict(os.environ, **(env or {}))
        self.log_path = Path(log_path) if log_path else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 30.0) -> ManagedProcess:
        out = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 (closed below, once Popen holds it)
        try:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT if out else None,
                                         env=self.env, cwd=self.cwd, start_new_session=True)
        finally:
            if out is not None:
                out.close()
        if self.health_url:
            self.wait_healthy(timeout_s)
        return self

    def wait_healthy(self, timeout_s: float) -> None:
        """Until the health URL answers 200; fails at once, with the log's tail, if the child exits meanwhile."""
        assert self.health_url is not None
        try:
            wait_until(self._healthy, timeout_s=timeout_s, what=f"{self.health_url} healthy",
                       ignoring=(urllib.error.URLError, OSError))
        except NotWithin as exc:
            raise ProcessStartFailed(f"{exc}{self._log_hint()}") from None

    def _healthy(self) -> bool:
        if not self.alive():
            raise ProcessStartFailed(f"{self.argv[:4]} exited with {self.proc.returncode if self.proc else None}"
                                     f"{self._log_hint()}")
        assert self.health_url is not None
        with urllib.request.urlopen(self.health_url, timeout=1) as r:
            return bool(r.status == 200)

    def _log_hint(self) -> str:
        if self.log_path and self.log_path.exists():
            tail = self.log_path.read_bytes()[-2000:].decode(errors="replace")
            return f"; log tail:\n{tail}"
        return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash would, and reap it."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode


def die_with_supervisor() -> None:
    """In a child started with SUPERVISOR_ENV: get SIGTERM when the supervisor dies, even by SIGKILL
    (prctl PR_SET_PDEATHSIG, Linux), so a supervisor killed outright leaves no orphan serving on its port;
    exit at once if it is already gone."""
    supervisor = os.environ.pop(SUPERVISOR_ENV, None)
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(supervisor):
        raise SystemExit(1)


def python_cli(module: str, *args: str) -> list[str]:
    """argv that runs one of this project's CLIs with the current interpreter."""
    return [sys.executable, "-m", module, *args]
