"""What a scenario reads while it runs: routers' status and metrics, processes' memory and descriptors.

Recovery is measured by polling a condition with a deadline (`time_until`),
never by sleeping for a guessed time: the answer is how long it took, or None
if it never happened within the deadline.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import msgspec

from bench.promtext import metric_sum

POLL_S = 0.1


async def time_until(predicate: Callable[[], Awaitable[object]], timeout_s: float) -> float | None:
    """Seconds until `predicate()` is truthy; None if it is not within `timeout_s` (or keeps raising)."""
    started = time.monotonic()
    while time.monotonic() - started <= timeout_s:
        try:
            if await predicate():
                return time.monotonic() - started
        except (aiohttp.ClientError, TimeoutError):
            pass  # a router being restarted or killed: the condition is simply not met yet
        await asyncio.sleep(POLL_S)
    return None


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as r:
        r.raise_for_status()
        return await r.json()


async def status(session: aiohttp.ClientSession, router: str) -> dict[str, Any]:
    return await get_json(session, router + "/v1/router/status")


async def loras(session: aiohttp.ClientSession, router: str) -> dict[str, dict[str, Any]]:
    """adapter name -> its view (replica_set, holders, draining, demand) on one router."""
    return {a["name"]: a for a in (await get_json(session, router + "/v1/loras"))["data"]}


async def worker_holds(session: aiohttp.ClientSession, worker: str) -> set[str]:
    data = await get_json(session, worker + "/v1/models")
    return {m["id"] for m in data["data"] if m.get("parent") is not None}


async def metrics_sum(session: aiohttp.ClientSession, routers: Sequence[str], name: str, where: str = "") -> float:
    """`name` summed over every router that answers (a killed one contributes what it said last: nothing)."""
    total = 0.0
    for router in routers:
        try:
            async with session.get(router + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
                total += metric_sum(await r.text(), name, where)
        except (aiohttp.ClientError, TimeoutError):
            continue
    return total


class Usage(msgspec.Struct, frozen=True):
    """One process's footprint at one moment (from /proc) and its event loop's task count."""

    at_s: float
    rss_mib: float
    fds: int
    tasks: int


def rss_and_fds(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def fds_besides_connections(pid: int) -> int:
    """Open descriptors other than established TCP connections.

    Live connections (clients' keep-alives, pooled ones to workers) come and go with the moment's concurrency
    and are closed by their peers in time; everything else (files, pipes, event fds, listeners, a socket its
    peer closed but the process never did) only grows if it leaks."""
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            established.update(fields[9] for fields in map(str.split, f) if fields[3] == "01")
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        count += not (target.startswith("socket:[") and target[8:-1] in established)
    return count


async def usage(session: aiohttp.ClientSession, router: str, pid: int, since: float) -> Usage:
    async with session.get(router + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
        tasks = int(metric_sum(await r.text(), "lora_router_asyncio_tasks"))
    rss, fds = rss_and_fds(pid)
    return Usage(at_s=round(time.monotonic() - since, 1), rss_mib=round(rss, 1), fds=fds, tasks=tasks)
