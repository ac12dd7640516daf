"""Real vLLM workers for tests: a tiny model and adapters on disk, servers on loopback.

The project venv has no torch; real vLLM lives in its own env made by
scripts/real-vllm-env, whose python the env var LORA_ROUTER_VLLM_PYTHON names.
This module only starts processes with that python (the model builder,
tinymodel.py, and vLLM's OpenAI server), so it imports nothing heavy and other
test areas (the contract suite, end-to-end tests) can use it as a backend.

Launch flags and environment follow the measured CPU recipe: one engine
process per server, eager mode, a 64 MiB KV cache, and each server's OpenMP
threads bound to its own core, since by default every server binds core 0.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discovery.ports import free_port
from router.procs import ManagedProcess

PYTHON_ENV_VAR = "LORA_ROUTER_VLLM_PYTHON"
SKIP_REASON = (f"real vLLM not configured: set {PYTHON_ENV_VAR} to the python of the env that "
               "scripts/real-vllm-env prints")
START_TIMEOUT_S = 180.0
BUILD_TIMEOUT_S = 300.0
# The session's pool: enough rank-8 adapters that the suites never wait for a second
# build (one costs ~4 s, mostly importing torch), plus one each of ranks 4 and 16.
DEFAULT_ADAPTERS = {**{f"pool-r8-{i}": 8 for i in range(16)}, "pool-r4-0": 4, "pool-r16-0": 16}
TINYMODEL = Path(__file__).with_name("tinymodel.py")
SERVER_ENV = {
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


class VllmEnvBroken(RuntimeError):
    """LORA_ROUTER_VLLM_PYTHON is set but does not name a usable interpreter."""


class ModelBuildFailed(RuntimeError):
    """tinymodel.py exited non-zero or printed something that is not its JSON answer."""


def vllm_python() -> str | None:
    """The real-vLLM env's python, or None when real-vLLM tests should be skipped.

    Set-but-wrong is an error, not a skip: a CI job that meant to run these
    tests must not pass by silently skipping them.
    """
    path = os.environ.get(PYTHON_ENV_VAR, "").strip()
    if not path:
        return None
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise VllmEnvBroken(f"{PYTHON_ENV_VAR}={path!r} is not an executable file")
    return path


def _run_builder(python: str, out: Path, adapters: Mapping[str, int]) -> dict[str, Any]:
    argv = [python, str(TINYMODEL), "--out", str(out)]
    argv += [f"--adapter={name}:{rank}" for name, rank in adapters.items()]
    done = subprocess.run(argv, check=False, capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT_S, env={**os.environ, **SERVER_ENV})
    if done.returncode != 0:
        raise ModelBuildFailed(f"{TINYMODEL.name} exited {done.returncode}:\n{done.stderr[-3000:]}")
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError as exc:
        raise ModelBuildFailed(f"{TINYMODEL.name} printed no JSON: {done.stdout[-500:]!r}") from exc


@dataclass
class TinyModel:
    """The base model and a pool of distinct adapters, built once per session.

    `make_adapter` hands out copies of pool adapters under any name, so a test
    can ask for many adapters without paying a torch start-up per adapter; when
    a rank's pool runs dry it builds more.
    """

    python: str
    root: Path
    model_dir: Path
    served_name: str
    adapters: dict[str, Path]
    ranks: dict[str, int]
    probe_prompt: str
    probe_outputs: dict[str, str]
    """Greedy continuation of probe_prompt per adapter name (and served_name for the base
    model), computed by tinymodel.py with plain torch: the reference vLLM must match."""
    _handed_out: set[str] = field(default_factory=set)

    def make_adapter(self, root: Path, name: str, rank: int = 8) -> Path:
        """A real adapter at root/name whose weights no other handed-out adapter shares."""
        source = next((p for n, p in self.adapters.items()
                       if self.ranks[n] == rank and n not in self._handed_out), None)
        if source is None:
            source = self._grow_pool(rank)
        self._handed_out.add(source.name)
        target = Path(root) / name
        shutil.copytree(source, target, dirs_exist_ok=True)
        self.probe_outputs[name] = self.probe_outputs[source.name]
        return target

    def _grow_pool(self, rank: int, count: int = 4) -> Path:
        fresh = {f"pool-r{rank}-{len(self.adapters) + i}": rank for i in range(count)}
        self._absorb(_run_builder(self.python, self.root, fresh))
        return self.adapters[next(iter(fresh))]

    def _absorb(self, built: dict[str, Any]) -> None:
        for name, info in built["adapters"].items():
            self.adapters[name] = Path(info["path"])
            self.ranks[name] = int(info["rank"])
        self.probe_outputs.update(built["probe_outputs"])


def build_tiny_model(python: str, out: Path,
                     adapters: Mapping[str, int] = DEFAULT_ADAPTERS) -> TinyModel:
    """Build the model and the named adapters (name -> rank) under `out`."""
    built = _run_builder(python, Path(out), adapters)
    served_name = str(built["served_name"])
    model = TinyModel(python=python, root=Path(out), model_dir=Path(built["model"]),
                      served_name=served_name, adapters={}, ranks={},
                      probe_prompt=str(built["probe_prompt"]), probe_outputs={})
    model._absorb(built)
    model.probe_outputs[served_name] = str(built["base_output"])
    return model


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


_next_core = itertools.cycle(usable_cores())


def vllm_worker(model: TinyModel, log_dir: str | Path, *, port: int | None = None,
                core: int | None = None, api_key: str | None = None, lora_modules: Mapping[str, Path] | None = None,
                max_loras: int = 2, max_lora_rank: int = 8, extra_args: Sequence[str] = (),
                env: Mapping[str, str] | None = None) -> ManagedProcess:
    """A real vLLM server process (not started), the real twin of localfleet.sim_worker.

    The API key goes through VLLM_API_KEY rather than --api-key so that it never
    shows in the process table; vLLM treats both the same. With no `core`, servers
    take the usable cores in turn (by default every vLLM server would bind core 0).
    """
    port = port or free_port()
    core = next(_next_core) if core is None else core
    argv = [model.python, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model.model_dir), "--served-model-name", model.served_name,
            "--host", "127.0.0.1", "--port", str(port),
            "--dtype", "float32", "--max-model-len", "256", "--max-num-seqs", "8",
            "--enforce-eager", "--kv-cache-memory-bytes", str(64 * 1024 * 1024),
            "--enable-lora", "--max-loras", str(max_loras), "--max-lora-rank", str(max_lora_rank)]
    if lora_modules:
        argv += ["--lora-modules", *(f"{name}={path}" for name, path in lora_modules.items())]
    argv += list(extra_args)
    server_env = {**SERVER_ENV, "VLLM_CPU_OMP_THREADS_BIND": str(core), **(env or {})}
    if api_key:
        server_env["VLLM_API_KEY"] = api_key
    return ManagedProcess(argv, health_url=f"http://127.0.0.1:{port}/health", env=server_env,
                          log_path=Path(log_dir) / f"vllm-{port}.log")


def start_all(procs: Sequence[ManagedProcess], timeout_s: float = START_TIMEOUT_S) -> None:
    """Start servers side by side (start-up is mostly single-threaded imports)."""
    with ThreadPoolExecutor(max_workers=max(1, len(procs))) as pool:
        list(pool.map(lambda p: p.start(timeout_s), procs))


@contextmanager
def running(procs: Sequence[ManagedProcess]) -> Iterator[Sequence[ManagedProcess]]:
    """Servers started side by side for the duration of a with-block, then stopped."""
    try:
        start_all(procs)
        yield procs
    finally:
        stop_all(procs)


def stop_all(procs: Sequence[ManagedProcess], timeout_s: float = 15.0) -> None:
    """SIGTERM every server's process group at once (vLLM exits in ~2 s), SIGKILL stragglers."""
    for p in procs:
        p.signal(signal.SIGTERM)
    for p in procs:
        p.stop(timeout_s)
