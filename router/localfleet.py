"""One local fleet: embedded etcd, simulated vLLM workers, their registrars and routers, as real processes.

Used by `lora-router demo`, the chaos, live and proxy benchmarks and the tests, so that all of them
start, break and stop processes the same way. Simulated workers run as `lora-bench worker`
processes: the router never imports the simulator, it only talks HTTP to it, exactly as it does to
real vLLM. Every child runs in its own session (`router.procs`) on a free loopback port and logs
into the fleet's directory; adapter directories are made there with the one file the worker
contract checks (`adapter_config.json` with `r`).

Each part is optional: a fleet of workers alone (vllm-router in front, or a test's static
`--worker`), with or without etcd, registrars and routers. Children that take seconds to start
(each is a Python interpreter) start in parallel.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Self

from discovery.embedded import EmbeddedEtcd
from discovery.ports import free_port, free_ports
from discovery.records import worker_id_for
from router.procs import ManagedProcess, python_cli

BASE_MODEL = "sim-base"
START_TIMEOUT_S = 60.0

Wrap = Callable[[list[str]], list[str]]
"""Rewrites a child's argv before it starts (e.g. `taskset` pinning)."""


def make_adapter_dir(root: str | Path, name: str, rank: int = 8) -> Path:
    """An adapter directory a simulated worker accepts: the PEFT config with rank `r`, no weights."""
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
              "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "sim"}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def sim_worker(log_dir: str | Path, *, model: str = BASE_MODEL, port: int | None = None,
               extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> ManagedProcess:
    """A simulated worker process (not started); runtime LoRA updating on, as a router needs (vLLM
    refuses /v1/load_lora_adapter without it)."""
    port = port or free_port()
    return ManagedProcess(
        python_cli("bench", "worker", "--port", str(port), "--model", model, *extra_args),
        health_url=f"http://127.0.0.1:{port}/health",
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True", **(env or {})},
        log_path=Path(log_dir) / f"worker-{port}.log",
    )


def registrar(log_dir: str | Path, etcd: str, url: str, *, slots: int, ttl_s: int = 3,
              extra_args: Sequence[str] = ()) -> ManagedProcess:
    """The registrar sidecar for a worker (not started): it has no health URL, its record in etcd is its sign."""
    return ManagedProcess(
        python_cli("router", "register", "--etcd", etcd, "--worker-url", url, "--slots", str(slots),
                   "--ttl", str(ttl_s), *extra_args),
        log_path=Path(log_dir) / f"registrar-{url.rsplit(':', 1)[1]}.log")


def base_url(proc: ManagedProcess) -> str:
    """Where a child that serves HTTP (worker or router) serves: its health URL less the path."""
    assert proc.health_url is not None
    return proc.health_url.rsplit("/", 1)[0]


class LocalWorker:
    """One simulated worker, its registrar (once registered), and the URL and id routers know it by.

    `proc` is replaced when the worker is restarted; the port, URL and id stay.
    """

    def __init__(self, index: int, port: int, *, model: str, args: tuple[str, ...], env: Mapping[str, str],
                 wrap: Wrap | None) -> None:
        self.index = index
        self.port = port
        self.model, self.args, self.env, self.wrap = model, args, env, wrap
        """How it was started, kept so that a restart brings back the same worker."""
        self.proc: ManagedProcess
        """Set by the fleet once it has made the process (it needs the fields above)."""
        self.url = f"http://127.0.0.1:{port}"
        self.id = worker_id_for(self.url)
        self.registrar: ManagedProcess | None = None


class LocalRouter:
    """One `lora-router serve` process and where it serves."""

    def __init__(self, router_id: str, proc: ManagedProcess, port: int, config_path: Path) -> None:
        self.id = router_id
        self.proc = proc
        self.port = port
        self.config_path = config_path
        self.url = f"http://127.0.0.1:{port}"


class LocalFleet:
    """Starts the parts asked for and stops every process it made, replaced ones included, whatever failed.

    A context manager: leaving it stops everything gracefully (SIGTERM, then SIGKILL); `stop(kill=True)`
    SIGKILLs at once, as a test's teardown or a chaos run wants.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.adapter_root = root / "adapters"
        self.etcd: EmbeddedEtcd | None = None
        self._owns_etcd = False
        self.workers: list[LocalWorker] = []
        self.routers: list[LocalRouter] = []
        self._procs: list[ManagedProcess] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- etcd and adapters ------------------------------------------------------------------
    def start_etcd(self) -> EmbeddedEtcd:
        """An embedded etcd of this fleet's own, stopped with it."""
        self.etcd = EmbeddedEtcd(self.root / "etcd")
        self._owns_etcd = True
        self.etcd.start()
        return self.etcd

    def use_etcd(self, etcd: EmbeddedEtcd) -> None:
        """Register workers and run routers against an etcd someone else started (and stops)."""
        self.etcd, self._owns_etcd = etcd, False

    @property
    def etcd_endpoint(self) -> str:
        assert self.etcd is not None, "start_etcd() or use_etcd() first"
        return self.etcd.endpoint

    def make_adapters(self, names: Sequence[str], rank: int = 8) -> list[Path]:
        """Adapter directories under `adapter_root`, one per name."""
        return [make_adapter_dir(self.adapter_root, name, rank) for name in names]

    def write_config(self, config: Mapping[str, object], name: str = "router.yaml") -> Path:
        """A router config file in the fleet's directory (JSON is YAML)."""
        path = self.root / name
        path.write_text(json.dumps(config))
        return path

    # -- workers ----------------------------------------------------------------------------
    def start_workers(self, args: Sequence[Sequence[str]], *, model: str = BASE_MODEL,
                      env: Mapping[str, str] | None = None, wrap: Wrap | None = None,
                      timeout_s: float = START_TIMEOUT_S) -> list[LocalWorker]:
        """One simulated worker per entry of `args` (its flags), started in parallel until healthy."""
        ports = free_ports(len(args))
        workers = [LocalWorker(len(self.workers) + i, port, model=model, args=tuple(flags),
                               env=dict(env or {}), wrap=wrap) for i, (flags, port) in enumerate(zip(args, ports,
                                                                                                    strict=True))]
        for worker in workers:
            worker.proc = self._worker_proc(worker)
        self.workers.extend(workers)
        _start_all([w.proc for w in workers], timeout_s)
        return workers

    def _worker_proc(self, worker: LocalWorker) -> ManagedProcess:
        proc = sim_worker(self.root, model=worker.model, port=worker.port, extra_args=worker.args, env=worker.env)
        if worker.wrap is not None:
            proc.argv = worker.wrap(proc.argv)
        return self._track(proc)

    def register(self, workers: Sequence[LocalWorker], *, slots: int, ttl_s: int = 3,
                 extra_args: Sequence[str] = ()) -> None:
        """A registrar sidecar per worker, announcing it on this fleet's etcd with `slots`."""
        for worker in workers:
            worker.registrar = self._track(registrar(self.root, self.etcd_endpoint, worker.url, slots=slots,
                                                     ttl_s=ttl_s, extra_args=extra_args)).start()

    def crash_worker(self, worker: LocalWorker) -> None:
        """SIGKILL the worker and its registrar: a host gone, its record left to expire with its lease."""
        worker.proc.kill()
        if worker.registrar is not None:
            worker.registrar.kill()

    def restart_worker(self, worker: LocalWorker, timeout_s: float = START_TIMEOUT_S) -> None:
        """SIGKILL the worker alone and start a fresh one on its port (same id, new instance) under the
        registrar that kept running: every runtime-loaded adapter gone."""
        worker.proc.kill()
        worker.proc = self._worker_proc(worker)
        worker.proc.start(timeout_s)

    # -- routers ----------------------------------------------------------------------------
    def start_routers(self, config_path: Path, router_ids: Sequence[str], *, ready: bool = True,
                      static_workers: Sequence[str] = (), extra_args: Sequence[str] = (), wrap: Wrap | None = None,
                      timeout_s: float = START_TIMEOUT_S) -> list[LocalRouter]:
        """`lora-router serve` processes on this fleet's etcd, started in parallel until /ready (or, with
        `ready=False`, until they answer /health); `static_workers` are passed as `--worker` URLs."""
        routers = []
        for router_id, port in zip(router_ids, free_ports(len(router_ids)), strict=True):
            argv = python_cli("router", "serve", "--config", str(config_path), "--port", str(port),
                              "--etcd", self.etcd_endpoint, "--router-id", router_id, *extra_args)
            for url in static_workers:
                argv += ["--worker", url]
            health = "/ready" if ready else "/health"
            proc = self._track(ManagedProcess(wrap(argv) if wrap else argv,
                                              health_url=f"http://127.0.0.1:{port}{health}",
                                              log_path=self.root / f"{router_id}.log"))
            routers.append(LocalRouter(router_id, proc, port, config_path))
        self.routers.extend(routers)
        _start_all([r.proc for r in routers], timeout_s)
        return routers

    # -- any child --------------------------------------------------------------------------
    def start_process(self, proc: ManagedProcess, timeout_s: float = START_TIMEOUT_S) -> ManagedProcess:
        """Start another child (a foreign proxy in front of the workers) and stop it with the fleet."""
        return self._track(proc).start(timeout_s)

    def _track(self, proc: ManagedProcess) -> ManagedProcess:
        self._procs.append(proc)
        return proc

    def stop(self, *, kill: bool = False) -> None:
        """Every child, newest first, then etcd if the fleet started it; SIGKILL at once with `kill`."""
        for proc in reversed(self._procs):
            if kill:
                proc.kill()
            else:
                proc.stop(timeout_s=5)
        self._procs.clear()
        if self.etcd is not None and self._owns_etcd:
            if kill:
                self.etcd.kill()
            else:
                self.etcd.stop()
        self.etcd = None


def _start_all(procs: Sequence[ManagedProcess], timeout_s: float) -> None:
    """Start children in parallel and wait until each is healthy; the first failure is raised."""
    if len(procs) == 1:
        procs[0].start(timeout_s)
        return
    with ThreadPoolExecutor(max_workers=max(1, len(procs))) as pool:
        list(pool.map(lambda p: p.start(timeout_s), procs))
