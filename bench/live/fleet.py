"""One run's processes: simulated workers, and in front of them either lora-router (embedded etcd,
a registrar per worker, K routers) or vllm-router; all on loopback, all stopped together.

Every strategy gets a fresh fleet, as in the simulator: no strategy inherits another's warm caches.
Children start in parallel (each is a Python interpreter, which costs seconds of CPU on a small
machine) and readiness is polled with a deadline, never slept for.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import msgspec

from discovery.embedded import EmbeddedEtcd
from discovery.ports import free_port
from router.devfleet import base_url, make_adapter_dir, registrar, router_server, sim_worker
from router.procs import ManagedProcess

BASE_MODEL = "sim-base"


class FleetNotReady(RuntimeError):
    """A part of the fleet never reached the state a run starts from."""


class FleetShape(msgspec.Struct, frozen=True, kw_only=True):
    workers: int
    max_loras: int
    speed: float

    @property
    def host_slots(self) -> int:
        """The host LRU the simulator gives every worker: 2 x max_loras (bench.sim.scenarios.Setup)."""
        return 2 * self.max_loras


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise FleetNotReady(f"{what} not within {timeout_s:.0f}s")


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _post(url: str, body: dict[str, object]) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _placed_on_all(status: object, workers: int) -> bool:
    """A run starts once the router sees every worker healthy and has ticked with a placement, not mid-start-up."""
    assert isinstance(status, dict)
    healthy = sum(w["healthy"] for w in status["workers"])
    return healthy >= workers and status["placement_epoch"] >= 1 and status["ticks"] >= 1


def _router_placed(base: str, workers: int) -> bool:
    return _placed_on_all(_get(base + "/v1/router/status"), workers)


def _held_by(listing: object, holders: int) -> bool:
    """Every adapter of a /v1/loras listing is seen on at least `holders` workers."""
    assert isinstance(listing, dict)
    return all(len(a["holders"]) >= holders for a in listing["data"])


class LiveFleet:
    def __init__(self, root: Path, shape: FleetShape, names: list[str]) -> None:
        self.root, self.shape, self.names = root, shape, names
        self.procs: list[ManagedProcess] = []
        self.etcd: EmbeddedEtcd | None = None
        self.workers: list[str] = []
        self.adapter_root = root / "adapters"
        for name in names:
            make_adapter_dir(self.adapter_root, name)

    def _start_all(self, procs: list[ManagedProcess], timeout_s: float = 60.0) -> list[ManagedProcess]:
        self.procs.extend(procs)
        with ThreadPoolExecutor(max_workers=max(1, len(procs))) as pool:
            list(pool.map(lambda p: p.start(timeout_s), procs))
        return procs

    def start_workers(self) -> list[str]:
        s = self.shape
        args = ("--max-loras", str(s.max_loras), "--max-cpu-loras", str(s.host_slots), "--speed", str(s.speed))
        procs = self._start_all([sim_worker(self.root, model=BASE_MODEL, extra_args=args) for _ in range(s.workers)])
        self.workers = [base_url(p) for p in procs]
        return self.workers

    def preload(self) -> None:
        """Every adapter registered on every worker through vLLM's own call, for routers that load nothing.

        The simulated worker's registry has no bound; its host LRU stays at `host_slots`, as in the
        simulator, so the weights are still read from disk on first use and evicted by LRU.
        """
        def load_all(worker: str) -> None:
            for name in self.names:
                status = _post(worker + "/v1/load_lora_adapter",
                               {"lora_name": name, "lora_path": str(self.adapter_root / name)})
                if status != 200:
                    raise FleetNotReady(f"{worker} answered {status} loading {name}")

        with ThreadPoolExecutor(max_workers=max(1, len(self.workers))) as pool:
            list(pool.map(load_all, self.workers))

    def start_lora_routers(self, config: dict[str, object], count: int, slots: int) -> list[str]:
        """etcd, a registrar per worker announcing `slots`, and `count` routers sharing the etcd."""
        self.etcd = EmbeddedEtcd(self.root / "etcd")
        self.etcd.start()
        endpoint = self.etcd.endpoint
        path = self.root / "router.json"
        path.write_text(json.dumps({"security": {"allowed_path_prefixes": [str(self.adapter_root)]},
                                    "adapters": [{"name": n, "source": str(self.adapter_root / n),
                                                  "base_model": BASE_MODEL} for n in self.names], **config}))
        self._start_all([registrar(self.root, endpoint, w, slots=slots) for w in self.workers])
        routers = self._start_all([router_server(self.root, path, endpoint, f"router-{k}",
                                                 extra_args=("--log-level", "WARNING")) for k in range(count)])
        bases = [base_url(r) for r in routers]
        for b in bases:
            wait_until(partial(_router_placed, b, len(self.workers)),
                       f"{b} seeing {len(self.workers)} healthy workers and a placement")
        return bases

    def wait_holders(self, base: str, holders: int) -> None:
        """Until the router has seen every adapter held by `holders` workers (their /v1/models listed)."""
        wait_until(lambda: _held_by(_get(base + "/v1/loras"), holders),
                   f"{base} seeing every adapter on {holders} workers")

    def start_vllm_router(self, binary: str, policy: str) -> str:
        port = free_port()
        proc = ManagedProcess([binary, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *self.workers,
                               "--policy", policy, "--log-level", "warning"],
                              health_url=f"http://127.0.0.1:{port}/health", log_path=self.root / "vllm-router.log")
        self._start_all([proc], timeout_s=120)
        base = base_url(proc)
        probe = {"model": BASE_MODEL, "prompt": "w", "max_tokens": 1}
        wait_until(lambda: _post(base + "/v1/completions", probe) == 200, f"{base} forwarding to a worker")
        return base

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop(timeout_s=5)
        self.procs.clear()
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None
