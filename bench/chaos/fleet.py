"""The fleet a scenario breaks: etcd, simulated workers with registrars, routers, all real processes.

A `router.localfleet.LocalFleet` started with what a chaos run needs: short leases and fast health
checks so that failures show within seconds, and a worker's faults (`--slow-s`, `--fail-rate`) by its
index. `crash_worker` SIGKILLs a worker and its registrar together, as a host crash would, so the
record goes with its lease after the TTL instead of a clean withdrawal; `restart_worker` brings a
worker back on the same port (same stable id, new instance) under the registrar that kept running.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import msgspec

from discovery.embedded import EmbeddedEtcd
from router.localfleet import BASE_MODEL, LocalFleet, LocalRouter, LocalWorker


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


class ChaosFleet:
    def __init__(self, root: Path, spec: FleetSpec) -> None:
        self.root = root
        self.spec = spec
        self.local = LocalFleet(root)
        self.config_path = root / "router.yaml"

    @property
    def etcd(self) -> EmbeddedEtcd:
        assert self.local.etcd is not None
        return self.local.etcd

    @property
    def workers(self) -> list[LocalWorker]:
        return self.local.workers

    @property
    def routers(self) -> list[LocalRouter]:
        return self.local.routers

    # -- start ------------------------------------------------------------------------------
    async def start(self, routers: int) -> None:
        """etcd, then the workers (in parallel) and their registrars, then the routers, each until healthy."""
        spec = self.spec
        await asyncio.to_thread(self.local.start_etcd)
        self.local.make_adapters(spec.adapters)
        self.local.write_config(self.router_config(), self.config_path.name)
        args = [(*spec.worker_args, *spec.worker_faults.get(i, ())) for i in range(spec.workers)]
        workers = await asyncio.to_thread(self.local.start_workers, args)
        self.local.register(workers, slots=spec.slots, ttl_s=spec.ttl_s,
                            extra_args=("--health-interval", "0.5", "--health-failures", "2", "--log-level", "WARNING"))
        await asyncio.to_thread(self.local.start_routers, self.config_path, [f"router-{i}" for i in range(routers)])

    def router_config(self) -> dict[str, Any]:
        spec, adapters = self.spec, self.local.adapter_root
        return {
            "security": {"allowed_path_prefixes": [str(adapters)]},
            "control": {"tick_s": spec.tick_s, "reconcile_s": spec.reconcile_s, "lease_ttl_s": spec.ttl_s,
                        "health_probe_s": 0.5, "worker_ops_per_s": 50.0, "retry_base_s": 0.2,
                        "retry_max_s": 2.0},
            "timeouts": {"connect_s": 1.0, "drain_timeout_s": 5.0, "worker_call_s": 5.0,
                         "cold_start_timeout_s": 10.0},
            "placement": spec.placement,
            "adapters": [{"name": n, "source": str(adapters / n), "base_model": BASE_MODEL} for n in spec.adapters],
        }

    # -- break ------------------------------------------------------------------------------
    def crash_worker(self, worker: LocalWorker) -> None:
        """SIGKILL the worker and its registrar: a host gone, its record left to expire."""
        self.local.crash_worker(worker)

    async def restart_worker(self, worker: LocalWorker) -> None:
        """SIGKILL the worker alone and start a fresh one on its port: every runtime-loaded adapter gone."""
        await asyncio.to_thread(self.local.restart_worker, worker)

    def pause(self, router: LocalRouter) -> None:
        router.proc.signal(signal.SIGSTOP)

    def resume(self, router: LocalRouter) -> None:
        router.proc.signal(signal.SIGCONT)

    # -- stop -------------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGKILL everything: a scenario's processes may be paused, and nothing of a run is worth a clean exit."""
        self.local.stop(kill=True)
