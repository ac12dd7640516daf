"""The fleet a scenario breaks: etcd, simulated workers with registrars, routers, all real processes.

Every process is a child in its own session (`router.procs`) on a free
loopback port, logging into one directory. `crash_worker` SIGKILLs a worker
and its registrar together, as a host crash would, so the record goes with its
lease after the TTL instead of a clean withdrawal; `restart_worker` brings a
worker back on the same port (same stable id, new instance) under the
registrar that kept running.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import msgspec

from discovery.embedded import EmbeddedEtcd
from discovery.ports import free_port
from discovery.records import worker_id_for
from router.devfleet import make_adapter_dir, sim_worker, worker_url
from router.procs import ManagedProcess, python_cli

BASE = "sim-base"


class FleetSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to start; `worker_faults` adds flags (e.g. `--slow-s 2`) to the worker at that index."""

    workers: int
    adapters: tuple[str, ...]
    slots: int = 32
    worker_args: tuple[str, ...] = ("--max-loras", "8", "--max-cpu-loras", "32", "--speed", "0.2")
    worker_faults: dict[int, tuple[str, ...]] = {}
    ttl_s: int = 2
    tick_s: float = 0.5
    reconcile_s: float = 1.0
    placement: dict[str, Any] = {}
    """The router config's `placement:` section."""


class Worker:
    """One simulated worker, its registrar, and the URL and id routers know it by."""

    def __init__(self, index: int, proc: ManagedProcess, registrar: ManagedProcess) -> None:
        self.index = index
        self.proc = proc
        self.registrar = registrar
        self.url = worker_url(proc)
        self.id = worker_id_for(self.url)
        self.port = int(self.url.rsplit(":", 1)[1])


class Router:
    def __init__(self, router_id: str, proc: ManagedProcess, port: int) -> None:
        self.id = router_id
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"


class ChaosFleet:
    def __init__(self, root: Path, spec: FleetSpec) -> None:
        self.root = root
        self.spec = spec
        self.etcd = EmbeddedEtcd(root / "etcd")
        self.workers: list[Worker] = []
        self.routers: list[Router] = []
        self.config_path = root / "router.yaml"
        self._procs: list[ManagedProcess] = []
        """Every process made here, replaced ones included, so that `stop` leaves none behind whatever failed."""

    # -- start ------------------------------------------------------------------------------
    async def start(self, routers: int) -> None:
        """etcd, then the workers and their registrars (in parallel), then the routers, each until healthy."""
        await asyncio.to_thread(self.etcd.start)
        for name in self.spec.adapters:
            make_adapter_dir(self.root / "adapters", name)
        self.config_path.write_text(json.dumps(self.router_config()))
        procs = [self._worker_proc(i) for i in range(self.spec.workers)]
        await asyncio.gather(*(asyncio.to_thread(p.start, 60) for p in procs))
        for i, proc in enumerate(procs):
            self.workers.append(Worker(i, proc, self._registrar(worker_url(proc)).start()))
        await asyncio.gather(*(self.start_router(f"router-{i}") for i in range(routers)))

    def router_config(self) -> dict[str, Any]:
        spec, adapters = self.spec, self.root / "adapters"
        return {
            "security": {"allowed_path_prefixes": [str(adapters)]},
            "control": {"tick_s": spec.tick_s, "reconcile_s": spec.reconcile_s, "lease_ttl_s": spec.ttl_s,
                        "health_probe_s": 0.5, "worker_ops_per_s": 50.0, "retry_base_s": 0.2,
                        "retry_max_s": 2.0},
            "timeouts": {"connect_s": 1.0, "drain_timeout_s": 5.0, "worker_call_s": 5.0,
                         "cold_start_timeout_s": 10.0},
            "placement": spec.placement,
            "adapters": [{"name": n, "source": str(adapters / n), "base_model": BASE} for n in spec.adapters],
        }

    def _worker_proc(self, index: int, port: int | None = None) -> ManagedProcess:
        args = (*self.spec.worker_args, *self.spec.worker_faults.get(index, ()))
        return self._track(sim_worker(self.root, model=BASE, port=port, extra_args=args))

    def _registrar(self, url: str) -> ManagedProcess:
        argv = python_cli("router", "register", "--etcd", self.etcd.endpoint, "--worker-url", url,
                          "--slots", str(self.spec.slots), "--ttl", str(self.spec.ttl_s),
                          "--health-interval", "0.5", "--health-failures", "2", "--log-level", "WARNING")
        return self._track(ManagedProcess(argv, log_path=self.root / f"registrar-{url.rsplit(':', 1)[1]}.log"))

    async def start_router(self, router_id: str) -> Router:
        port = free_port()
        argv = python_cli("router", "serve", "--config", str(self.config_path), "--port", str(port),
                          "--etcd", self.etcd.endpoint, "--router-id", router_id)
        proc = self._track(ManagedProcess(argv, health_url=f"http://127.0.0.1:{port}/ready",
                                          log_path=self.root / f"{router_id}.log"))
        await asyncio.to_thread(proc.start, 60)
        router = Router(router_id, proc, port)
        self.routers.append(router)
        return router

    def _track(self, proc: ManagedProcess) -> ManagedProcess:
        self._procs.append(proc)
        return proc

    # -- break ------------------------------------------------------------------------------
    def crash_worker(self, worker: Worker) -> None:
        """SIGKILL the worker and its registrar: a host gone, its record left to expire."""
        worker.proc.kill()
        worker.registrar.kill()

    async def restart_worker(self, worker: Worker) -> None:
        """SIGKILL the worker alone and start a fresh one on its port: every runtime-loaded adapter gone."""
        worker.proc.kill()
        worker.proc = self._worker_proc(worker.index, port=worker.port)
        await asyncio.to_thread(worker.proc.start, 60)

    def pause(self, router: Router) -> None:
        router.proc.signal(signal.SIGSTOP)

    def resume(self, router: Router) -> None:
        router.proc.signal(signal.SIGCONT)

    # -- stop -------------------------------------------------------------------------------
    def stop(self) -> None:
        for proc in reversed(self._procs):
            proc.kill()
        self.etcd.kill()
