"""Drives bench.perfmodel.EngineModel in real time: each step sleeps for the duration the model gives."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

from bench.perfmodel import EngineModel, PerfParams, Sequence


class LiveEngine:
    def __init__(self, params: PerfParams) -> None:
        self.model = EngineModel(params)
        self._wake = asyncio.Event()
        self._queues: dict[int, asyncio.Queue[bool]] = {}
        self._ids = itertools.count(1)
        self.busy_s = 0.0
        """Modelled step time so far (speed applied): what a GPU would have been busy for."""

    async def run(self) -> None:
        while True:
            if self.model.idle:
                self._wake.clear()
                await self._wake.wait()
            result = self.model.step()
            self.busy_s += result.duration_s
            await asyncio.sleep(result.duration_s)
            finished = set(result.finished)
            for rid in result.advanced:
                queue = self._queues.get(rid)
                if queue is not None:
                    queue.put_nowait(rid in finished)

    async def generate(self, adapter: str | None, prompt_tokens: int, output_tokens: int) -> AsyncIterator[int]:
        """Yield token indices 0..output_tokens-1 as the engine emits them."""
        rid = next(self._ids)
        queue: asyncio.Queue[bool] = asyncio.Queue()
        self._queues[rid] = queue
        self.model.submit(Sequence(rid, adapter, prompt_tokens, output_tokens, time.monotonic()))
        self._wake.set()
        try:
            index = 0
            while True:
                last = await queue.get()
                yield index
                index += 1
                if last:
                    return
        finally:
            del self._queues[rid]
            self.model.cancel(rid)
