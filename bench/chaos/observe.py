"""What a scenario reads while it runs: routers' status and metrics, processes' memory and descriptors.

Recovery is measured by polling a condition with a deadline (`time_until`),
never by sleeping for a guessed time: the answer is how long it took, or None
if it never happened within the deadline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp
import msgspec

from bench.promtext import metric_sum
from router.waiting import NotWithin, wait_until_async

POLL_S = 0.1


async def time_until(predicate: Callable[[], Awaitable[object]], timeout_s: float) -> float | None:
    """Seconds until `predicate()` is truthy; None if it is not within `timeout_s` (or keeps raising).

    A router being restarted or killed answers with connection errors or timeouts: the condition is
    simply not met yet.
    """
    started = time.monotonic()
    try:
        await wait_until_async(predicate, timeout_s=timeout_s, what="recovery", interval_s=POLL_S,
                               ignoring=(aiohttp.ClientError, TimeoutError))
    except NotWithin:
        return None
    return time.monotonic() - started


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
    clients: int = 0
    """Client connections open to the process's port: each holds a descriptor and (aiohttp) a task, idle or
    not, so the counts above move with the client's keep-alive pool."""


def rss_and_fds(pid: int) -> tuple[float, int]:
    with open(f"/proc/{pid}/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


_LIVE = {"01", "02", "03"}
"""TCP states of a connection in use: established, or being set up (SYN sent or received)."""


def _established() -> dict[str, int]:
    """Socket inode -> local port, for every live TCP connection of this host (IPv4 and IPv6)."""
    found: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for fields in map(str.split, f):
                if fields[3] in _LIVE:
                    found[fields[9]] = int(fields[1].rsplit(":", 1)[1], 16)
    return found


def _socket_inodes(pid: int) -> list[str | None]:
    """Per open descriptor of `pid`: its socket inode, or None for anything else."""
    inodes: list[str | None] = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        inodes.append(target[8:-1] if target.startswith("socket:[") else None)
    return inodes


def fds_besides_connections(pid: int) -> int:
    """Open descriptors other than established TCP connections.

    Live connections (clients' keep-alives, pooled ones to workers) come and go with the moment's concurrency
    and are closed by their peers in time; everything else (files, pipes, event fds, listeners, a socket its
    peer closed but the process never did) only grows if it leaks."""
    # The tables read before and after the descriptors: a connection opened or closed meanwhile is in one.
    before = _established()
    inodes = _socket_inodes(pid)
    live = before | _established()
    return sum(inode not in live for inode in inodes)


def client_connections(pid: int, port: int) -> int:
    """Established connections `pid` holds on its own listening `port`: its clients'."""
    established = _established()
    return sum(established.get(inode or "") == port for inode in _socket_inodes(pid))


async def usage(session: aiohttp.ClientSession, router: str, pid: int, since: float) -> Usage:
    async with session.get(router + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
        tasks = int(metric_sum(await r.text(), "lora_router_asyncio_tasks"))
    rss, fds = rss_and_fds(pid)
    clients = client_connections(pid, int(router.rsplit(":", 1)[1]))
    return Usage(at_s=round(time.monotonic() - since, 1), rss_mib=round(rss, 1), fds=fds, tasks=tasks,
                 clients=clients)
