"""The things measured: one simulated worker, and each proxy in front of it as a real process.

Every target is started once and kept for the whole run, so repetitions
alternate between warm proxies. A proxy's CPU is read from its process tree;
lora-router's etcd runs outside that tree (a shared service in production,
not per-request work), pinned with the worker.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import msgspec

from bench.proxybench.load import ADAPTER, PATH, request_body
from bench.proxybench.pinning import Cores, pin_running, pinned
from discovery.ports import free_port
from router.localfleet import BASE_MODEL, LocalFleet
from router.procs import ManagedProcess
from router.waiting import NotWithin, wait_until

TARGETS = ("direct", "lora-router", "lora-router-noprefix", "nginx", "vllm-router")
DEFAULT_TARGETS = ("direct", "lora-router", "nginx", "vllm-router")


class Target(msgspec.Struct, frozen=True):
    name: str
    url: str
    """Base URL the load is sent to."""
    pid: int | None
    """Root of the proxy's process tree; None for the worker itself (direct)."""


class TargetNeverServed(RuntimeError):
    """A proxy started but never answered a completion for the adapter."""


def nginx_conf(root: Path, port: int, upstream: str) -> Path:
    """A plain reverse proxy as nginx is usually deployed in front of vLLM: upstream keep-alive, no buffering."""
    conf = root / "nginx.conf"
    conf.write_text(f"""worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fcgi; uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
  upstream worker {{ server {upstream.removeprefix("http://")}; keepalive 128; }}
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


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


def vllm_router_binary() -> str | None:
    return os.environ.get("VLLM_ROUTER_BIN") or shutil.which("vllm-router")


class Targets:
    """Starts what `wanted` names (skipping what is not installed, with a note) and stops it all.

    The worker, lora-router and its etcd are a `LocalFleet`'s; nginx and vllm-router are started
    here and stopped with the fleet.
    """

    def __init__(self, root: Path, cores: Cores) -> None:
        self.root = root
        self.cores = cores
        self.fleet = LocalFleet(root)
        self.started: dict[str, Target] = {}
        self.notes: list[str] = []
        self.etcd_started = False

    def start(self, wanted: list[str]) -> None:
        (adapter,) = self.fleet.make_adapters([ADAPTER])
        (worker,) = self.fleet.start_workers([("--speed", "0", "--lora-modules", f"{ADAPTER}={adapter}")],
                                             wrap=partial(pinned, core=self.cores.load))
        self.started["direct"] = Target("direct", worker.url, None)
        optional = {"nginx": (nginx_binary(), "Debian package nginx-light", self._nginx),
                    "vllm-router": (vllm_router_binary(), "pip install vllm-router, or set VLLM_ROUTER_BIN",
                                    self._vllm_router)}
        for name in wanted:
            if name in ("lora-router", "lora-router-noprefix"):
                self._lora_router(name, worker.url, adapter)
            elif name in optional:
                binary, hint, launch = optional[name]
                if binary is None:
                    self.notes.append(f"{name} not installed ({hint}): skipped")
                else:
                    launch(binary, worker.url, free_port())

    def stop(self) -> None:
        self.fleet.stop()

    def _serving(self, name: str, base: str, pid: int) -> None:
        _wait_served(base)
        self.started[name] = Target(name, base, pid)

    def _proxy(self, name: str, argv: list[str], port: int, health: str, timeout_s: float = 60) -> None:
        base = f"http://127.0.0.1:{port}"
        proc = self.fleet.start_process(ManagedProcess(pinned(argv, self.cores.proxy), health_url=base + health,
                                                       log_path=self.root / f"{name}.log"), timeout_s)
        self._serving(name, base, proc.pid)

    def _lora_router(self, name: str, url: str, adapter: Path) -> None:
        """`lora-router`, or with prefix-cache-aware picking off (`lora-router-noprefix`): its cost alone.
        Both share one etcd, as several routers do."""
        if not self.etcd_started:
            etcd = self.fleet.start_etcd()
            self.etcd_started = True
            if etcd.proc is not None:
                pin_running(etcd.proc.pid, self.cores.load)
        config = self.fleet.write_config({
            "security": {"allowed_path_prefixes": [str(adapter.parent)]},
            "prefix": {"index_blocks": 0 if name == "lora-router-noprefix" else 2048},
            "adapters": [{"name": ADAPTER, "source": str(adapter), "base_model": BASE_MODEL}]}, f"{name}.json")
        (router,) = self.fleet.start_routers(config, [name], static_workers=[url],
                                             extra_args=("--log-level", "WARNING"),
                                             wrap=partial(pinned, core=self.cores.proxy))
        self._serving(name, router.url, router.proc.pid)

    def _nginx(self, binary: str, url: str, port: int) -> None:
        conf = nginx_conf(self.root, port, url)
        self._proxy("nginx", [binary, "-c", str(conf), "-g", "daemon off;"], port, "/health")

    def _vllm_router(self, binary: str, url: str, port: int) -> None:
        self._proxy("vllm-router", [binary, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", url,
                                    "--policy", "round_robin", "--log-level", "warning"], port, "/health",
                    timeout_s=120)


def _wait_served(base: str, timeout_s: float = 60) -> None:
    """Ready is not enough: lora-router answers /ready before it has seen the worker hold the adapter."""
    def served() -> bool:
        req = urllib.request.Request(base + PATH, data=request_body("plain"),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return bool(r.status == 200)

    try:
        wait_until(served, timeout_s=timeout_s, what=f"{base} serving {ADAPTER}", interval_s=0.1,
                   ignoring=(urllib.error.URLError, OSError))
    except NotWithin as exc:
        raise TargetNeverServed(str(exc)) from None
