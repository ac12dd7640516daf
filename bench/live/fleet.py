"""One run's processes: simulated workers, and in front of them either lora-router (embedded etcd,
a registrar per worker, K routers) or vllm-router; all on loopback, all stopped together.

Every strategy gets a fresh fleet, as in the simulator: no strategy inherits another's warm caches.
The processes are a `router.localfleet.LocalFleet` (children start in parallel: each is a Python
interpreter, which costs seconds of CPU on a small machine) and readiness is polled with a deadline
(`router.waiting`), never slept for.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import msgspec

from discovery.ports import free_port
from router.localfleet import BASE_MODEL, LocalFleet
from router.procs import ManagedProcess
from router.waiting import wait_until

MAX_MODEL_LEN = 65536
"""The workers' context: the simulator has no limit, and a chat session's prompts grow past vLLM's usual 4k."""


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


def _wait(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """A router or worker still starting refuses, times out or answers half a document: not ready yet."""
    wait_until(check, timeout_s=timeout_s, what=what, interval_s=0.1,
               ignoring=(urllib.error.URLError, OSError, ValueError, KeyError))


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
        self.local = LocalFleet(root)
        self.workers: list[str] = []
        self.adapter_root = self.local.adapter_root
        self.local.make_adapters(names)

    def start_workers(self) -> list[str]:
        s = self.shape
        args = ("--max-loras", str(s.max_loras), "--max-cpu-loras", str(s.host_slots), "--speed", str(s.speed),
                "--max-model-len", str(MAX_MODEL_LEN))
        self.workers = [w.url for w in self.local.start_workers([args] * s.workers)]
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
        self.local.start_etcd()
        path = self.local.write_config(
            {"security": {"allowed_path_prefixes": [str(self.adapter_root)]},
             "adapters": [{"name": n, "source": str(self.adapter_root / n), "base_model": BASE_MODEL}
                          for n in self.names], **config}, "router.json")
        self.local.register(self.local.workers, slots=slots)
        routers = self.local.start_routers(path, [f"router-{k}" for k in range(count)], ready=False,
                                           extra_args=("--log-level", "WARNING"))
        bases = [r.url for r in routers]
        for b in bases:
            _wait(partial(_router_placed, b, len(self.workers)),
                  f"{b} seeing {len(self.workers)} healthy workers and a placement")
        return bases

    def wait_holders(self, base: str, holders: int) -> None:
        """Until the router has seen every adapter held by `holders` workers (their /v1/models listed)."""
        _wait(lambda: _held_by(_get(base + "/v1/loras"), holders), f"{base} seeing every adapter on {holders} workers")

    def start_vllm_router(self, binary: str, policy: str) -> str:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        self.local.start_process(
            ManagedProcess([binary, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", *self.workers,
                            "--policy", policy, "--log-level", "warning"],
                           health_url=base + "/health", log_path=self.root / "vllm-router.log"), timeout_s=120)
        probe = {"model": BASE_MODEL, "prompt": "w", "max_tokens": 1}
        _wait(lambda: _post(base + "/v1/completions", probe) == 200, f"{base} forwarding to a worker")
        return base

    def stop(self) -> None:
        self.local.stop()
