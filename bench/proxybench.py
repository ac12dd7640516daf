"""Proxy overhead, measured the same way for every proxy: wrk load, CPU time of the proxy's process tree.

On a 2-core machine the simulated worker saturates first, so requests per
second say little about a proxy; the CPU it spends per request does. Each
proxy runs pinned to core 0; the worker and wrk share core 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec

from discovery.embedded import EmbeddedEtcd
from discovery.ports import free_port
from router.devfleet import make_adapter_dir, sim_worker, worker_url
from router.procs import ManagedProcess, python_cli

ADAPTER = "bench-lora"


class Sample(msgspec.Struct):
    target: str
    mode: str
    concurrency: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float


def tree_cpu_s(pid: int) -> float:
    """user+sys CPU seconds of `pid` and every live descendant."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        stack.extend(children.get(p, []))
    return total


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text: str) -> tuple[int, float, float, float]:
    """(requests, req/s, p50 ms, p99 ms) from `wrk --latency` output."""
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
        return float(m.group(1)) * _UNITS[m.group(2)] if m else float("nan")

    return requests, rps, pct("50"), pct("99")


def wrk_script(path: Path, stream: bool) -> Path:
    body = json.dumps({"model": ADAPTER, "prompt": "hello", "max_tokens": 16, "ignore_eos": True,
                       "stream": stream})
    path.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                    'wrk.headers["Content-Type"] = "application/json"\n')
    return path


def nginx_conf(root: Path, port: int, upstream: str) -> Path:
    host = upstream.removeprefix("http://")
    conf = root / "nginx.conf"
    conf.write_text(f"""worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
  upstream worker {{ server {host}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://worker; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
""")
    return conf


class Bench:
    """One worker and every available proxy in front of it, for the whole run."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(tempfile.mkdtemp(prefix="lora-bench-proxy-"))
        self.procs: list[ManagedProcess] = []
        self.targets: dict[str, tuple[str, int | None]] = {}
        """name -> (base URL, pid whose process tree is the proxy; None for direct)."""
        self.notes: list[str] = []

    def start(self, wanted: list[str]) -> None:
        adapter = make_adapter_dir(self.root / "adapters", ADAPTER)
        worker = sim_worker(self.root, extra_args=("--speed", "0", "--lora-modules", f"{ADAPTER}={adapter}"))
        worker.argv = ["taskset", "-c", "1", *worker.argv]
        url = worker_url(self._started(worker))
        self.targets["direct"] = (url, None)
        if "lora-router" in wanted:
            self._lora_router(url, adapter)
        if "nginx" in wanted:
            self._nginx(url)
        if "vllm-router" in wanted:
            self._vllm_router(url)

    def _started(self, proc: ManagedProcess, timeout_s: float = 60) -> ManagedProcess:
        self.procs.append(proc)
        return proc.start(timeout_s)

    def _lora_router(self, url: str, adapter: Path) -> None:
        etcd = EmbeddedEtcd(self.root / "etcd")
        etcd.start()
        self.etcd = etcd
        port = free_port()
        config = self.root / "router.json"
        config.write_text(json.dumps({
            "security": {"allowed_path_prefixes": [str(adapter.parent)]},
            "adapters": [{"name": ADAPTER, "source": str(adapter), "base_model": "sim-base"}]}))
        proc = ManagedProcess(
            ["taskset", "-c", "0", *python_cli("router", "serve", "--config", str(config), "--port", str(port),
                                               "--etcd", etcd.endpoint, "--worker", url, "--log-level", "WARNING")],
            health_url=f"http://127.0.0.1:{port}/ready", log_path=self.root / "router.log")
        self._started(proc)
        self.targets["lora-router"] = (f"http://127.0.0.1:{port}", proc.pid)
        self._wait_served(f"http://127.0.0.1:{port}")

    def _nginx(self, url: str) -> None:
        binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if binary is None:
            self.notes.append("nginx not installed (Debian package nginx-light): skipped")
            return
        port = free_port()
        conf = nginx_conf(self.root, port, url)
        proc = ManagedProcess(["taskset", "-c", "0", binary, "-c", str(conf), "-g", "daemon off;"],
                              health_url=f"http://127.0.0.1:{port}/health", log_path=self.root / "nginx.log")
        self._started(proc)
        self.targets["nginx"] = (f"http://127.0.0.1:{port}", proc.pid)

    def _vllm_router(self, url: str) -> None:
        binary = os.environ.get("VLLM_ROUTER_BIN") or shutil.which("vllm-router")
        if binary is None:
            self.notes.append("vllm-router not installed (pip install vllm-router, or set VLLM_ROUTER_BIN): skipped")
            return
        port = free_port()
        proc = ManagedProcess(["taskset", "-c", "0", binary, "--host", "127.0.0.1", "--port", str(port),
                               "--worker-urls", url, "--policy", "round_robin", "--log-level", "warning"],
                              health_url=f"http://127.0.0.1:{port}/health", log_path=self.root / "vllm-router.log")
        self._started(proc, timeout_s=120)
        self.targets["vllm-router"] = (f"http://127.0.0.1:{port}", proc.pid)
        self._wait_served(f"http://127.0.0.1:{port}")

    def _wait_served(self, base: str, timeout_s: float = 60) -> None:
        import urllib.error
        import urllib.request

        body = json.dumps({"model": ADAPTER, "prompt": "x", "max_tokens": 1}).encode()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            req = urllib.request.Request(base + "/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{base} never served {ADAPTER}")

    def measure(self, target: str, stream: bool, concurrency: int, seconds: int) -> Sample:
        base, pid = self.targets[target]
        script = wrk_script(self.root / f"post-{stream}.lua", stream)
        before = tree_cpu_s(pid) if pid else 0.0
        out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s",
                              "--latency", "-s", str(script), base + "/v1/completions"],
                             capture_output=True, text=True, check=True).stdout
        cpu = (tree_cpu_s(pid) - before) if pid else float("nan")
        requests, rps, p50, p99 = parse_wrk(out)
        return Sample(target=target, mode="stream" if stream else "plain", concurrency=concurrency,
                      requests=requests, rps=rps, p50_ms=p50, p99_ms=p99,
                      cpu_us_per_request=1e6 * cpu / max(requests, 1))

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout_s=5)
        if hasattr(self, "etcd"):
            self.etcd.stop()
