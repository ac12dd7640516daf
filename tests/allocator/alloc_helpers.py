"""Fleet builders and runners shared by the allocator tests."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from allocator.model import Adapter, Demand, Worker

REPO = Path(__file__).resolve().parents[2]


def fleet(seed: int, n_workers: int, n_adapters: int, slots: int = 64,
          rps_per_worker: float = 50.0) -> tuple[list[Worker], list[Adapter], dict[str, Demand]]:
    """Names differ per seed, so each seed is an independent draw of HRW hashes."""
    workers = [Worker(id=f"s{seed}-w{i}", base_model="m", slots=slots) for i in range(n_workers)]
    adapters = [Adapter(name=f"s{seed}-a{i}", base_model="m") for i in range(n_adapters)]
    weights = 1.0 / np.arange(1, n_adapters + 1)
    rates = weights / weights.sum() * n_workers * rps_per_worker
    return workers, adapters, {a.name: Demand(rps=float(r)) for a, r in zip(adapters, rates, strict=True)}


def joined_or_left(rng: random.Random, change: str, workers: list[Worker], pool: list[Worker],
                   keep: int) -> list[Worker] | None:
    """The membership after a random join (1-3 from `pool`) or leave (1-3, keeping more than `keep`); None
    for any other change."""
    if change == "join":
        present = {w.id for w in workers}
        return workers + [w for w in pool if w.id not in present][:rng.randint(1, 3)]
    if change == "leave" and len(workers) > keep:
        return rng.sample(workers, len(workers) - rng.randint(1, min(3, len(workers) - keep)))
    return None


def run_cli(module: str, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run one subcommand module through the real dispatcher in a fresh process."""
    code = ("import sys; from router.clikit import dispatch; "
            f"sys.exit(dispatch('cli', '', {{{name!r}: {module!r}}}, [{name!r}] + sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=120, check=False)
