"""A router with auth, two tenants, two adapters, an alias and one fast simulated worker, for hostile clients."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hostile_helpers import ACME, ADMIN, BASE, GLOBEX

from router.config import key_digest
from router.localfleet import base_url


class Hostile:
    """The router under attack and what the tests need to know about it."""

    def __init__(self, router: Any, adapter_root: Path, tmp_path: Path) -> None:
        self.router = router
        self.port: int = router.port
        self.adapter_root = adapter_root
        self.tmp_path = tmp_path


@pytest.fixture
def hostile_router(start_workers: Callable, start_router: Callable, adapter_dirs: Callable,
                   tmp_path: Path) -> Callable[..., Hostile]:
    """Start the router; keyword arguments are merged into the config's sections."""

    def start(*, workers: int = 1, worker_args: tuple[str, ...] = (), **sections: dict[str, Any]) -> Hostile:
        root = adapter_dirs("acme-chat").parent
        adapter_dirs("globex-chat")
        (tmp_path / "admin-keys").write_text(ADMIN + "\n")
        config: dict[str, Any] = {
            "security": {"allowed_path_prefixes": [str(root)]},
            "auth": {"admin_keys_file": str(tmp_path / "admin-keys")},
            "tenants": {"acme": {"keys_sha256": [key_digest(ACME)]},
                        "globex": {"keys_sha256": [key_digest(GLOBEX)]}},
            "adapters": [
                {"name": "acme-chat", "source": str(root / "acme-chat"), "base_model": BASE, "tenant": "acme"},
                {"name": "globex-chat", "source": str(root / "globex-chat"), "base_model": BASE,
                 "tenant": "globex"},
            ],
            "aliases": {"shared-chat": {"acme-chat": 1.0, "globex-chat": 1.0}},
            "control": {"tick_s": 0.5, "reconcile_s": 1.0},
        }
        for section, values in sections.items():
            config[section] = {**config.get(section, {}), **values}
        procs = start_workers(workers, extra_args=("--speed", "0", "--max-loras", "4", "--max-cpu-loras", "64",
                                                    *worker_args))
        return Hostile(start_router(config, workers=[base_url(p) for p in procs]), root, tmp_path)

    return start
