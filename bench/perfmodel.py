"""A GPU worker's performance, as one step-driven model shared by the live simulated worker and the simulator.

The model is vLLM's continuous batching reduced to what placement changes:

- a batch holds at most `max_num_seqs` sequences and at most `max_loras`
  distinct adapters (GPU slots); a request whose adapter cannot get a slot
  waits while others that fit go ahead (vLLM's scheduler skips it);
- putting an adapter into a GPU slot costs `slot_swap_ms` (host -> GPU copy);
  if its weights are not in the host LRU of `max_cpu_loras` adapters they
  are first read from disk, `host_load_ms`;
- a step prefills newly admitted prompts (`prefill_ms_per_token`, growing with
  batch size) and decodes one token for every running sequence: `decode_base_ms`
  + `decode_ms_per_seq` per sequence + `decode_ms_per_adapter` per distinct
  adapter in the batch (the SGMV/Punica kernels' cost grows with adapters);
- `/v1/load_lora_adapter` costs `runtime_load_ms` (weights read and checked);
- a prefix (KV) cache of `kv_blocks` blocks of `block_tokens` tokens, LRU:
  a prompt's leading blocks found there (keyed by adapter and everything
  before them, as vLLM's block hashes are) are not prefilled again. A prompt
  always computes at least its last token, as vLLM's does.

Defaults are loosely those of a 7-8B model on one data-centre GPU. Every cost
is multiplied by `speed` (0.01 makes tests fast, 0 makes the model free). Time
is always passed in: the live worker sleeps for a step's duration, the
discrete-event simulator advances a virtual clock by it, and runs the identical
decode steps between two admissions in one call (`EngineModel.coast`).
"""

from __future__ import annotations

import heapq
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from typing import TypeVar

import msgspec

K = TypeVar("K")


class PerfParams(msgspec.Struct, frozen=True, kw_only=True):
    max_num_seqs: int = 64
    max_loras: int = 1
    max_cpu_loras: int | None = None
    """Host LRU size; None = max_loras, as vLLM defaults it."""
    decode_base_ms: float = 12.0
    decode_ms_per_seq: float = 0.15
    decode_ms_per_adapter: float = 1.5
    prefill_ms_per_token: float = 0.04
    prefill_batch_factor: float = 0.002
    """Prefill per-token cost grows by this fraction per sequence already running."""
    slot_swap_ms: float = 8.0
    host_load_ms: float = 120.0
    runtime_load_ms: float = 25.0
    block_tokens: int = 16
    """vLLM's KV block size: the prefix cache's unit."""
    kv_blocks: int = 8192
    """KV-cache capacity in blocks (131k tokens at 16: roughly an 8B model's on a 40 GB share of a GPU)."""
    speed: float = 1.0

    @property
    def host_slots(self) -> int:
        return max(self.max_cpu_loras or self.max_loras, self.max_loras)


class Sequence:
    """One request inside the engine."""

    __slots__ = ("adapter", "arrived", "blocks", "output_tokens", "prompt_tokens", "rid")

    def __init__(self, rid: int, adapter: str | None, prompt_tokens: int, output_tokens: int,
                 arrived: float, blocks: tuple[int, ...] = ()) -> None:
        self.rid = rid
        self.adapter = adapter
        self.prompt_tokens = prompt_tokens
        self.output_tokens = max(1, output_tokens)
        self.arrived = arrived
        self.blocks = blocks
        """The prompt's full KV blocks, as the prefix cache keys them (bench.workloads.prompt_blocks)."""


class StepResult(msgspec.Struct, kw_only=True):
    duration_s: float
    started: list[int]
    """Requests whose prefill ran in this step (their first token is emitted at its end)."""
    advanced: list[int]
    """Every request that emitted one token in this step (started ones included)."""
    finished: list[int]
    slot_swaps: int = 0
    host_loads: int = 0


def _count(adapters: Iterable[K]) -> dict[K, int]:
    return dict(Counter(adapters))


def count_down(counts: dict[K, int], key: K) -> None:
    """One fewer of `key`; a key counted down to nothing leaves, so `len` stays the number of distinct keys."""
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class EngineModel:
    """One worker's scheduler state; `step()` runs one batch iteration and says how long it took.

    Between admissions a batch repeats the same decode step until a sequence
    finishes, so `coast_steps` / `decode_s` / `coast` let a caller that keeps
    its own clock (the simulator) run those steps in one call; the results
    equal stepping one by one. Per-adapter counts of the batch and the queue
    are kept so that neither a step nor that check rescans the sequences, and
    the batch's sequences advance together on one step clock: each knows the
    clock reading at which it finishes, and a heap of those gives the next.
    """

    def __init__(self, params: PerfParams) -> None:
        self.params = params
        self.waiting: deque[Sequence] = deque()
        self.running: dict[int, Sequence] = {}
        """Request id -> sequence, in admission order."""
        self.gpu: OrderedDict[str, None] = OrderedDict()
        self.host: OrderedDict[str, None] = OrderedDict()
        self.slot_swaps = 0
        self.host_loads = 0
        self._step_swaps = 0
        self._step_loads = 0
        self._batch: dict[str, int] = {}
        """Adapter -> sequences of it in the batch (its keys are the batch's distinct adapters)."""
        self._queued: dict[str | None, int] = {}
        """Adapter (None = base model) -> sequences of it waiting."""
        self._clock = 0
        """Decode steps run so far: a sequence admitted at reading c with n output tokens ends at c + n."""
        self._ends: list[tuple[int, int, int]] = []
        """Heap of (clock reading at which it finishes, admission number, request id) of the batch."""
        self._admitted = 0
        self.kv: OrderedDict[int, None] = OrderedDict()
        """The prefix cache: block -> None, least recently used first."""
        self.prefix_queries = 0
        self.prefix_hits = 0
        """Prompt tokens looked up in the prefix cache, and those found (vLLM's prefix_cache_* counters)."""

    def submit(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        self._queued[seq.adapter] = self._queued.get(seq.adapter, 0) + 1

    def cancel(self, rid: int) -> None:
        self.waiting = deque(s for s in self.waiting if s.rid != rid)
        if self.running.pop(rid, None) is not None:
            self._ends = [e for e in self._ends if e[2] != rid]
            heapq.heapify(self._ends)
        self._batch = _count(s.adapter for s in self.running.values() if s.adapter is not None)
        self._queued = _count(s.adapter for s in self.waiting)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def running_adapters(self) -> list[str]:
        return sorted(self._batch)

    def waiting_adapters(self) -> list[str]:
        return sorted(a for a in self._queued if a is not None)

    def forget_host(self, adapter: str) -> None:
        """An unloaded adapter leaves the host cache (vLLM may keep it until eviction; we are strict)."""
        self.host.pop(adapter, None)

    def load_cost_s(self) -> float:
        return self.params.runtime_load_ms * self.params.speed / 1000.0

    def can_admit(self) -> bool:
        """Whether the next step would take a waiting request into the batch."""
        p = self.params
        if not self.waiting or len(self.running) >= p.max_num_seqs:
            return False
        queued = self._queued
        if None in queued or len(self._batch) < p.max_loras:
            return True
        return any(a in queued for a in self._batch)

    def coast_steps(self) -> int:
        """How many identical decode-only steps come next if nothing is submitted meanwhile: up to and
        including the step in which the first running sequence finishes; 0 when the next step admits."""
        if not self.running or self.can_admit():
            return 0
        return self._ends[0][0] - self._clock

    def decode_s(self) -> float:
        """Duration of one decode-only step of the current batch (what `step` returns when it admits nothing)."""
        p = self.params
        ms = p.decode_base_ms + p.decode_ms_per_seq * len(self.running) + p.decode_ms_per_adapter * len(self._batch)
        return ms * p.speed / 1000.0

    def coast(self, steps: int) -> list[int]:
        """Run `steps` (<= `coast_steps()`) decode-only steps at once; the requests finished in the last one."""
        return self._emit(steps)

    def step(self) -> StepResult:
        p = self.params
        swap_ms, started, prefill_tokens = self._admit()
        n = len(self.running)
        ms = swap_ms
        if n:
            ms += p.decode_base_ms + p.decode_ms_per_seq * n + p.decode_ms_per_adapter * len(self._batch)
            ms += prefill_tokens * p.prefill_ms_per_token * (1.0 + p.prefill_batch_factor * n)
        advanced = list(self.running)
        finished = self._emit(1)
        return StepResult(duration_s=ms * p.speed / 1000.0, started=started, advanced=advanced,
                          finished=finished, slot_swaps=self._step_swaps, host_loads=self._step_loads)

    def _emit(self, tokens: int) -> list[int]:
        """Every running sequence emits `tokens` tokens; those that reach their output leave the batch."""
        self._clock += tokens
        ends, clock = self._ends, self._clock
        finished: list[int] = []
        while ends and ends[0][0] <= clock:
            rid = heapq.heappop(ends)[2]
            finished.append(rid)
            adapter = self.running.pop(rid).adapter
            if adapter is not None:
                count_down(self._batch, adapter)
        return finished

    def _admit(self) -> tuple[float, list[int], int]:
        """Move waiting requests into the batch, FCFS, skipping those whose adapter cannot get a slot.

        Returns the slot cost (ms), the admitted requests and their prompt tokens. Once the batch's
        adapters fill every slot, only requests of those adapters (or of none) can join: the scan stops
        when the per-adapter counts say none of them is left, instead of walking the whole queue.
        """
        p = self.params
        self._step_swaps = self._step_loads = 0
        batch, queued, waiting, running = self._batch, self._queued, self.waiting, self.running
        cost_ms = 0.0
        prefill = 0
        started: list[int] = []
        skipped: list[Sequence] = []
        admissible = -1
        """Waiting requests that may still join once the slots are full; -1 = not full yet."""
        while waiting and len(running) < p.max_num_seqs:
            if admissible < 0 and len(batch) >= p.max_loras:
                admissible = queued.get(None, 0) + sum(queued.get(a, 0) for a in batch)
            if admissible == 0:
                break
            seq = waiting.popleft()
            adapter = seq.adapter
            if adapter is not None:
                if adapter not in batch:
                    if admissible >= 0:
                        skipped.append(seq)
                        continue
                    cost_ms += self._slot_in(adapter, batch)
                    batch[adapter] = 0
                batch[adapter] += 1
                self.gpu.move_to_end(adapter)
            if admissible > 0:
                admissible -= 1
            count_down(queued, adapter)
            running[seq.rid] = seq
            heapq.heappush(self._ends, (self._clock + seq.output_tokens, self._admitted, seq.rid))
            self._admitted += 1
            started.append(seq.rid)
            prefill += seq.prompt_tokens - self._cached_tokens(seq)
        waiting.extendleft(reversed(skipped))
        return cost_ms, started, prefill

    def _cached_tokens(self, seq: Sequence) -> int:
        """Look the prompt up in the prefix cache and leave all its blocks there, the prompt's first ones
        most recent: a block is then never evicted before one that follows it in some prompt, as vLLM
        frees a request's blocks tail first."""
        self.prefix_queries += seq.prompt_tokens
        blocks = seq.blocks
        if not blocks:
            return 0
        kv = self.kv
        hit = 0
        for block in blocks:
            if block not in kv:
                break
            hit += 1
        for block in reversed(blocks):
            if block in kv:
                kv.move_to_end(block)
            else:
                kv[block] = None
        while len(kv) > self.params.kv_blocks:
            kv.popitem(last=False)
        tokens = min(hit * self.params.block_tokens, seq.prompt_tokens - 1)
        self.prefix_hits += tokens
        return tokens

    def _slot_in(self, adapter: str, in_batch: Mapping[str, int]) -> float:
        p = self.params
        if adapter in self.gpu:
            return 0.0
        cost = 0.0
        if adapter in self.host:
            self.host.move_to_end(adapter)
        else:
            cost += p.host_load_ms
            self._step_loads += 1
            self.host_loads += 1
            self.host[adapter] = None
            while len(self.host) > p.host_slots:
                victim = next((a for a in self.host if a not in in_batch and a != adapter), None)
                if victim is None:
                    break
                del self.host[victim]
        if len(self.gpu) >= p.max_loras:
            victim = next((a for a in self.gpu if a not in in_batch), None)
            if victim is not None:
                del self.gpu[victim]
        self.gpu[adapter] = None
        self._step_swaps += 1
        self.slot_swaps += 1
        return cost + p.slot_swap_ms
