"""Drives bench.perfmodel.EngineModel in real time: each step sleeps for the duration the model gives.

The engine's prefix cache needs each prompt's KV blocks; `prompt_blocks` makes them from the prompt's
text as vLLM's block hashes do: a block per `block_tokens` tokens (words, as the worker counts them),
each hash chained on the one before and the chain seeded with the served model's name (vLLM keys the
hash of a LoRA request by its adapter), so equal text under another adapter shares nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from collections.abc import Sequence as Seq

import xxhash

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

    async def generate(self, adapter: str | None, prompt_tokens: int, output_tokens: int,
                       blocks: tuple[int, ...] = ()) -> AsyncIterator[int]:
        """Yield token indices 0..output_tokens-1 as the engine emits them. `blocks`: the prompt's
        (`prompt_blocks`), for the prefix cache."""
        rid = next(self._ids)
        queue: asyncio.Queue[bool] = asyncio.Queue()
        self._queues[rid] = queue
        self.model.submit(Sequence(rid, adapter, prompt_tokens, output_tokens, time.monotonic(), blocks))
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


def prompt_blocks(model: str, words: Seq[str], block_tokens: int, prompt_tokens: int) -> tuple[int, ...]:
    """The full blocks of a rendered prompt (`words`), as chained hashes seeded with `model`: block k's
    hash depends on the model and on every word up to the end of block k. At most `prompt_tokens` words
    are cut into blocks (a chat rendering has a few role words more than the worker counts)."""
    full = min(len(words), prompt_tokens) // block_tokens
    state = xxhash.xxh64_intdigest(model.encode())
    blocks = []
    for k in range(full):
        state = xxhash.xxh64_intdigest(" ".join(words[k * block_tokens:(k + 1) * block_tokens]).encode(), seed=state)
        blocks.append(state)
    return tuple(blocks)
