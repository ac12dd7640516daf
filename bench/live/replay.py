"""Open-loop replay of a `bench.workloads` request stream over HTTP, streaming, in scaled wall-clock time.

The workers run the performance model at `speed` (every cost multiplied by it), so a request due at
virtual time t is sent at t x speed of wall time and every measured time is divided by speed again:
the figures come back in the simulator's units. Open loop: a slow answer never delays the next send,
as with real clients. TTFT is the first SSE data chunk (the first token), end-to-end the `[DONE]`.
The bodies (bodies.py: completions, or chat turns for the chat scenario) are made before the first send.
"""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import msgspec
import numpy as np

from bench.live.bodies import bodies
from bench.workloads import Requests

SESSION_HEADER = "X-Session-ID"
"""vllm-router's consistent_hash keys on it; sent as the adapter name, so it hashes per adapter."""
WORKER_HEADER = "x-lora-router-worker"


class Replayed(msgspec.Struct, kw_only=True):
    """Per request, in virtual seconds from the run's start (NaN where it never happened)."""

    sent: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    status: np.ndarray
    """HTTP status; 0 = no complete answer (connection error, timeout, or a stream cut before `[DONE]`)."""
    workers: list[str | None]
    """The worker that served it, where the router says (lora-router's header)."""
    send_lag_s: float
    """Worst lateness of a send against its schedule, wall seconds: the client keeping up or not."""


class _Run:
    def __init__(self, n: int, speed: float, t0: float) -> None:
        self.speed, self.t0 = speed, t0
        self.sent = np.full(n, np.nan)
        self.first = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int32)
        self.workers: list[str | None] = [None] * n

    def now(self) -> float:
        return (asyncio.get_running_loop().time() - self.t0) / self.speed

    async def one(self, session: aiohttp.ClientSession, url: str, rid: int, adapter: str, payload: bytes) -> None:
        self.sent[rid] = self.now()
        headers = {"Content-Type": "application/json", SESSION_HEADER: adapter}
        try:
            async with session.post(url, data=payload, headers=headers) as r:
                self.status[rid] = r.status
                self.workers[rid] = r.headers.get(WORKER_HEADER)
                if r.status != 200:
                    await r.read()
                    return
                async for line in r.content:
                    if not line.startswith(b"data:"):
                        continue
                    if line.strip() == b"data: [DONE]":
                        self.finish[rid] = self.now()
                        return
                    if np.isnan(self.first[rid]):
                        self.first[rid] = self.now()
        except (aiohttp.ClientError, TimeoutError):
            self.status[rid] = 0
        if np.isnan(self.finish[rid]):
            self.status[rid] = 0


async def replay(requests: Requests, names: list[str], bases: list[str], speed: float,
                 request_timeout_s: float = 120.0) -> Replayed:
    """Send every request to `bases` in turn (several routers share the stream) and wait for all answers.

    Bounded: each request by `request_timeout_s` of wall time, the sends by the stream's length.
    """
    n = len(requests)
    path, payloads = bodies(requests, names)
    loop = asyncio.get_running_loop()
    run = _Run(n, speed, loop.time() + 0.2)
    urls = itertools.cycle([b + path for b in bases])
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    lag = 0.0
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks: list[asyncio.Task[None]] = []
        for rid, (at, a) in enumerate(zip(requests.time.tolist(), requests.adapter.tolist(), strict=True)):
            due = run.t0 + at * speed
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag = max(lag, -delay)
            tasks.append(asyncio.create_task(run.one(session, next(urls), rid, names[a], payloads[rid])))
        await asyncio.gather(*tasks)
    return Replayed(sent=run.sent, first_token=run.first, finish=run.finish, status=run.status,
                    workers=run.workers, send_lag_s=round(lag, 4))
