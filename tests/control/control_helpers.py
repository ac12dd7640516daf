"""Helpers for the control-plane tests: async polling, a paced traffic source, router config dicts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from router.waiting import wait_until_async

BASE = "sim-base"
WORKER_ARGS = ("--max-loras", "4", "--speed", "0.01")
"""Simulated workers with room for a few adapters each (the registrar reads slots from --max-loras), fast."""


def router_config(adapter_root: Path, names: list[str] = (), **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "security": {"allowed_path_prefixes": [str(adapter_root)]},
        "control": {"tick_s": 0.3, "reconcile_s": 1.0, "lease_ttl_s": 2, "retry_base_s": 0.2},
        "timeouts": {"drain_timeout_s": 10.0},
        "adapters": [{"name": n, "source": str(adapter_root / n), "base_model": BASE} for n in names],
    }
    config.update(extra)
    return config


async def until(predicate: Callable[[], Awaitable[Any]], timeout_s: float, what: str,
                interval_s: float = 0.05) -> Any:
    """`router.waiting.wait_until_async` with the positional arguments of the callers here."""
    return await wait_until_async(predicate, timeout_s=timeout_s, what=what, interval_s=interval_s)


async def get_json(session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> Any:
    async with session.get(url, headers=headers) as r:
        assert r.status == 200, f"GET {url}: {r.status} {await r.text()}"
        return await r.json()


async def held(session: aiohttp.ClientSession, worker: str) -> set[str]:
    data = await get_json(session, worker + "/v1/models")
    return {m["id"] for m in data["data"] if m["parent"] is not None}


class Traffic:
    """Completions for one model at a steady, changeable rate; keeps every status it got back."""

    def __init__(self, session: aiohttp.ClientSession, router: str, model: str, rps: float,
                 max_tokens: int = 8) -> None:
        self.session = session
        self.router = router
        self.model = model
        self.rps = rps
        self.max_tokens = max_tokens
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._pacer: asyncio.Task[None] | None = None

    async def _one(self) -> None:
        body = {"model": self.model, "prompt": "x", "max_tokens": self.max_tokens, "ignore_eos": True}
        try:
            async with self.session.post(self.router + "/v1/completions", json=body) as r:
                text = await r.text()
                self.statuses.append(r.status)
                if r.status != 200:
                    self.errors.append(f"{r.status}: {text[:200]}")
        except aiohttp.ClientError as exc:
            self.statuses.append(0)
            self.errors.append(repr(exc))

    async def _pace(self) -> None:
        while True:
            if self.rps > 0:
                task = asyncio.create_task(self._one())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(1.0 / self.rps if self.rps > 0 else 0.1)

    def start(self) -> Traffic:
        self._pacer = asyncio.create_task(self._pace())
        return self

    async def stop(self) -> None:
        assert self._pacer is not None
        self._pacer.cancel()
        await asyncio.gather(self._pacer, return_exceptions=True)
        await asyncio.gather(*self._tasks, return_exceptions=True)
