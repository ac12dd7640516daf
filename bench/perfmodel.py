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
- `/v1/load_lora_adapter` costs `runtime_load_ms` (weights read and checked).

Defaults are loosely those of a 7-8B model on one data-centre GPU. Every cost
is multiplied by `speed` (0.01 makes tests fast, 0 makes the model free). Time
is always passed in: the live worker sleeps for a step's duration, the
discrete-event simulator advances a virtual clock by it.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import msgspec


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
    speed: float = 1.0

    @property
    def host_slots(self) -> int:
        return max(self.max_cpu_loras or self.max_loras, self.max_loras)


class Sequence:
    """One request inside the engine."""

    __slots__ = ("adapter", "arrived", "emitted", "output_tokens", "prompt_tokens", "rid")

    def __init__(self, rid: int, adapter: str | None, prompt_tokens: int, output_tokens: int,
                 arrived: float) -> None:
        self.rid = rid
        self.adapter = adapter
        self.prompt_tokens = prompt_tokens
        self.output_tokens = max(1, output_tokens)
        self.emitted = 0
        self.arrived = arrived


class StepResult(msgspec.Struct, kw_only=True):
    duration_s: float
    started: list[int]
    """Requests whose prefill ran in this step (their first token is emitted at its end)."""
    advanced: list[int]
    """Every request that emitted one token in this step (started ones included)."""
    finished: list[int]
    slot_swaps: int = 0
    host_loads: int = 0


class EngineModel:
    """One worker's scheduler state; `step()` runs one batch iteration and says how long it took."""

    def __init__(self, params: PerfParams) -> None:
        self.params = params
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.gpu: OrderedDict[str, None] = OrderedDict()
        self.host: OrderedDict[str, None] = OrderedDict()
        self.slot_swaps = 0
        self.host_loads = 0
        self.busy_s = 0.0
        """Modelled step time so far (speed applied): the worker's busy time, for imbalance."""
        self._step_swaps = 0
        self._step_loads = 0

    def submit(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def cancel(self, rid: int) -> None:
        self.waiting = deque(s for s in self.waiting if s.rid != rid)
        self.running = [s for s in self.running if s.rid != rid]

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def running_adapters(self) -> list[str]:
        return sorted({s.adapter for s in self.running if s.adapter is not None})

    def waiting_adapters(self) -> list[str]:
        return sorted({s.adapter for s in self.waiting if s.adapter is not None})

    def forget_host(self, adapter: str) -> None:
        """An unloaded adapter leaves the host cache (vLLM may keep it until eviction; we are strict)."""
        self.host.pop(adapter, None)

    def load_cost_s(self) -> float:
        return self.params.runtime_load_ms * self.params.speed / 1000.0

    def step(self) -> StepResult:
        p = self.params
        swap_ms, started = self._admit()
        prefill_tokens = 0
        for seq in self.running:
            if seq.emitted == 0:
                prefill_tokens += seq.prompt_tokens
        n = len(self.running)
        adapters = len({s.adapter for s in self.running if s.adapter is not None})
        ms = swap_ms
        if n:
            ms += p.decode_base_ms + p.decode_ms_per_seq * n + p.decode_ms_per_adapter * adapters
            ms += prefill_tokens * p.prefill_ms_per_token * (1.0 + p.prefill_batch_factor * n)
        advanced: list[int] = []
        finished: list[int] = []
        still: list[Sequence] = []
        for seq in self.running:
            seq.emitted += 1
            advanced.append(seq.rid)
            if seq.emitted >= seq.output_tokens:
                finished.append(seq.rid)
            else:
                still.append(seq)
        self.running = still
        swaps, loads = self._step_swaps, self._step_loads
        self.busy_s += ms * p.speed / 1000.0
        return StepResult(duration_s=ms * p.speed / 1000.0, started=started, advanced=advanced,
                          finished=finished, slot_swaps=swaps, host_loads=loads)

    def _admit(self) -> tuple[float, list[int]]:
        """Move waiting requests into the batch, FCFS, skipping those whose adapter cannot get a slot."""
        p = self.params
        self._step_swaps = self._step_loads = 0
        in_batch = {s.adapter for s in self.running if s.adapter is not None}
        cost_ms = 0.0
        started: list[int] = []
        skipped: deque[Sequence] = deque()
        while self.waiting and len(self.running) < p.max_num_seqs:
            seq = self.waiting.popleft()
            adapter = seq.adapter
            if adapter is not None and adapter not in in_batch:
                if len(in_batch) >= p.max_loras:
                    skipped.append(seq)
                    continue
                cost_ms += self._slot_in(adapter, in_batch)
                in_batch.add(adapter)
            if adapter is not None:
                self.gpu.move_to_end(adapter)
            self.running.append(seq)
            started.append(seq.rid)
        skipped.extend(self.waiting)
        self.waiting = skipped
        return cost_ms, started

    def _slot_in(self, adapter: str, in_batch: set[str]) -> float:
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
