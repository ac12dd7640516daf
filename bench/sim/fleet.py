"""The fleet over virtual time: one `bench.perfmodel.EngineModel` per worker, driven by an event heap.

The engine is the very model the simulated vLLM worker runs, so batching,
per-adapter decode costs, GPU slot swaps and the host LRU are the worker's own;
this module only decides WHEN things happen. A worker steps back to back while
it has work: a step starting at t admits and decodes, and its first tokens and
finishes land at t + duration.

Fast-forward: when the next step would admit nothing, the batch repeats one
decode step until its first sequence finishes, so the worker "coasts" through
those k steps as ONE event. Only a request routed to it that could join the
batch interrupts the coast: it is cut at the first step boundary at or after
the arrival, where a normal step admits it, exactly when step-by-step
simulation would (boundaries are summed step by step, so times are equal, not
just close). `SimFleet(fast_forward=False)` steps one by one, for the tests.
Routing and placement decisions belong to the
strategy (bench/sim/strategies.py), which calls `submit`, `wait`, `load` and
`unload` here.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from bench.perfmodel import EngineModel, PerfParams, Sequence, StepResult, count_down
from bench.workloads import Requests, prompt_blocks

_STEP_END, _COAST_END, _LOAD_DONE, _TIMER = 0, 1, 2, 3

_Payload = tuple[Any, Any]
"""An event's arguments, by its kind: (worker state, step result), (worker state, coast id),
(worker index, adapter) or (period or None, action). Typed where unpacked: the kind says which."""


class SimWorker:
    """One simulated worker: its engine and what the baseline strategies read (`inflight`, slots, queues)."""

    __slots__ = ("adapter_inflight", "busy", "busy_s", "changes", "coast", "coast_id", "engine", "held", "index",
                 "inflight", "loading", "max_loras", "max_seqs", "running", "served", "waiting")

    def __init__(self, index: int, params: PerfParams) -> None:
        self.index = index
        self.engine = EngineModel(params)
        self.max_loras: int | None = params.max_loras
        self.max_seqs: int | None = params.max_num_seqs
        """The batch limits router.core.picking checks; the real router knows max_loras from the worker's record."""
        self.busy = False
        self.busy_s = 0.0
        self.inflight = 0
        self.served = 0
        self.held: set[int] = set()
        """Adapters a placement load made resident (the router's holdings)."""
        self.loading: dict[int, list[int]] = {}
        """Adapter -> requests waiting for its load to finish here."""
        self.changes = 0
        """Bumped whenever `held` or `loading` changes, so a reconciler may reuse what it derived from them."""
        self.running: dict[int, int] = {}
        self.waiting: dict[int, int] = {}
        """Per adapter: requests in the batch / queued here (the signals vLLM's metrics expose)."""
        self.adapter_inflight: dict[int, int] = {}
        """Per adapter: requests sent here and not finished, loads waited for included (the router's count)."""
        self.coast: tuple[float, float, int] | None = None
        """While coasting: (start, step duration, steps), the coast ending after the last step."""
        self.coast_id = 0
        """Bumped when a coast is cut short, so that its superseded end event is ignored."""


class Outcome(msgspec.Struct, kw_only=True):
    """Everything metrics need from one run."""

    arrival: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray
    worker: np.ndarray
    busy_s: np.ndarray
    served: np.ndarray
    slot_swaps: int
    adapter_loads: int
    """Adapter weights read from disk into a worker (the engines' host-cache misses)."""
    placement_loads: int
    """/v1/load_lora_adapter calls the placement made (registrations; the read happens on first use)."""
    placement_unloads: int
    load_times: np.ndarray
    """Virtual time of every adapter read from disk."""
    prefix_queries: int = 0
    prefix_hits: int = 0
    """Prompt tokens looked up in the workers' prefix caches, and those found there (not prefilled)."""


def _inc(counts: dict[int, int], key: int) -> None:
    counts[key] = counts.get(key, 0) + 1


def _boundary(start: float, step_s: float, steps: int, at_or_after: float = float("inf")) -> tuple[float, int]:
    """The end of the `steps`-th step from `start`, or of the first one ending at or after `at_or_after`,
    and how many steps that is; summed step by step as stepping one at a time sums them."""
    end, n = start, 0
    while n < steps:
        end += step_s
        n += 1
        if end >= at_or_after:
            break
    return end, n


class SimFleet:
    def __init__(self, n_workers: int, names: list[str], params: PerfParams, fast_forward: bool = True) -> None:
        self.params = params
        self.fast_forward = fast_forward
        self.names = names
        self.workers = [SimWorker(i, params) for i in range(n_workers)]
        self.now = 0.0
        self._heap: list[tuple[float, int, int, _Payload]] = []
        self._seq = 0
        self._pending = 0
        self._placement_loads = 0
        self._placement_unloads = 0
        self._load_times: list[float] = []
        self._adapter: list[int] = []
        self._prompt: list[int] = []
        self._output: list[int] = []
        self._first: list[float] = []
        self._finish: list[float] = []
        self._worker: list[int] = []
        """Per request, as plain lists while running (numpy scalars cost more per access); arrays at the end."""
        self._session: list[int] = []
        self._system: list[int] = []
        self._prompts: dict[int, tuple[int, ...]] = {}
        """The prompt blocks of requests arrived and not yet in an engine."""
        self.inflight = [0] * len(names)
        """Per adapter: requests arrived and not finished (what the router's demand counts in flight)."""
        self.on_loaded: Callable[[int, int], None] | None = None
        """Called with (worker, adapter) after every finished load: the holdings changed."""
        self.on_finished: Callable[[int, list[int]], None] | None = None
        """Called with (worker, adapters of the requests that just finished there)."""

    def _push(self, at: float, kind: int, payload: _Payload) -> None:
        self._seq += 1
        if kind != _TIMER:
            self._pending += 1
        heapq.heappush(self._heap, (at, self._seq, kind, payload))

    def every(self, period_s: float, first_s: float, action: Callable[[float], None]) -> None:
        """Call `action(now)` at `first_s` and every `period_s` after, while requests remain."""
        self._push(first_s, _TIMER, (period_s, action))

    def at(self, when_s: float, action: Callable[[float], None]) -> None:
        """Call `action(now)` once at `when_s`."""
        self._push(when_s, _TIMER, (None, action))

    def session(self, rid: int) -> int:
        """The request's conversation, -1 for none."""
        return self._session[rid] if self._session else -1

    def prompt_tokens(self, rid: int) -> int:
        return self._prompt[rid]

    def first_token_at(self, rid: int) -> float:
        """Virtual time of the request's first token; NaN until then."""
        return self._first[rid]

    def finished_at(self, rid: int) -> float:
        """Virtual time the request finished; NaN until then."""
        return self._finish[rid]

    def prompt(self, rid: int) -> tuple[int, ...]:
        """The request's prompt blocks (bench.workloads.prompt_blocks): () outside a chat session."""
        blocks = self._prompts.get(rid)
        if blocks is None:
            session = self.session(rid)
            blocks = self._prompts[rid] = prompt_blocks(self._adapter[rid], session, self._system[rid] if
                                                        self._system else 0, self._prompt[rid],
                                                        self.params.block_tokens) if session >= 0 else ()
        return blocks

    def submit(self, w: int, rid: int) -> None:
        ws = self.workers[w]
        a = self._adapter[rid]
        blocks = self.prompt(rid)
        del self._prompts[rid]
        ws.engine.submit(Sequence(rid, self.names[a], self._prompt[rid], self._output[rid], self.now, blocks))
        self._worker[rid] = w
        ws.inflight += 1
        _inc(ws.waiting, a)
        _inc(ws.adapter_inflight, a)
        if not ws.busy:
            self._step(ws)
        elif ws.coast is not None and ws.engine.can_admit():
            self._cut(ws)

    def wait(self, w: int, rid: int, adapter: int) -> None:
        """Hold a request until `adapter` finishes loading on worker `w` (cold start)."""
        self.load(w, adapter)
        ws = self.workers[w]
        ws.loading[adapter].append(rid)
        ws.inflight += 1
        _inc(ws.adapter_inflight, adapter)

    def load(self, w: int, adapter: int) -> None:
        ws = self.workers[w]
        if adapter in ws.held or adapter in ws.loading:
            return
        ws.loading[adapter] = []
        ws.changes += 1
        self._push(self.now + ws.engine.load_cost_s(), _LOAD_DONE, (w, adapter))

    def unload(self, w: int, adapter: int) -> bool:
        """Drop a placement-held adapter once nothing of it is queued or running there."""
        ws = self.workers[w]
        if adapter not in ws.held or adapter in ws.running or adapter in ws.waiting:
            return False
        ws.held.discard(adapter)
        ws.changes += 1
        ws.engine.forget_host(self.names[adapter])
        self._placement_unloads += 1
        return True

    def _loaded(self, w: int, adapter: int) -> None:
        """Registered, as the simulated worker's /v1/load_lora_adapter does: the weights reach the host
        cache and a GPU slot with the first request's step, which pays for them."""
        ws = self.workers[w]
        ws.held.add(adapter)
        ws.changes += 1
        self._placement_loads += 1
        for rid in ws.loading.pop(adapter):
            ws.inflight -= 1
            count_down(ws.adapter_inflight, adapter)
            self.submit(w, rid)
        if self.on_loaded is not None:
            self.on_loaded(w, adapter)

    def _step(self, ws: SimWorker) -> None:
        """Start the worker's next step now: a coast through identical decode steps, or one step."""
        ws.busy = True
        engine = ws.engine
        steps = engine.coast_steps() if self.fast_forward else 0
        if steps:
            step_s = engine.decode_s()
            ws.coast = (self.now, step_s, steps)
            self._push(_boundary(self.now, step_s, steps)[0], _COAST_END, (ws, ws.coast_id))
            return
        result = engine.step()
        ws.busy_s += result.duration_s
        self._push(self.now + result.duration_s, _STEP_END, (ws, result))

    def _cut(self, ws: SimWorker) -> None:
        """A request that can join the batch arrived: end the coast at the step boundary it waits for."""
        start, step_s, steps = ws.coast  # type: ignore[misc]
        end, n = _boundary(start, step_s, steps, self.now)
        if n < steps:
            ws.coast = (start, step_s, n)
            ws.coast_id += 1
            self._push(end, _COAST_END, (ws, ws.coast_id))

    def _coast_end(self, ws: SimWorker, coast_id: int) -> None:
        if coast_id != ws.coast_id:
            return
        _, step_s, steps = ws.coast  # type: ignore[misc]
        ws.coast = None
        ws.busy_s += step_s * steps
        self._finished(ws, ws.engine.coast(steps))
        ws.busy = False
        if not ws.engine.idle:
            self._step(ws)

    def _finished(self, ws: SimWorker, rids: list[int]) -> None:
        now, adapter, inflight, finish = self.now, self._adapter, self.inflight, self._finish
        for rid in rids:
            finish[rid] = now
            a = adapter[rid]
            count_down(ws.running, a)
            count_down(ws.adapter_inflight, a)
            inflight[a] -= 1
        ws.inflight -= len(rids)
        ws.served += len(rids)
        if self.on_finished is not None and rids:
            self.on_finished(ws.index, [adapter[rid] for rid in rids])

    def _step_end(self, ws: SimWorker, result: StepResult) -> None:
        now, adapter, first = self.now, self._adapter, self._first
        for rid in result.started:
            first[rid] = now
            a = adapter[rid]
            count_down(ws.waiting, a)
            _inc(ws.running, a)
        self._finished(ws, result.finished)
        self._load_times.extend([now] * result.host_loads)
        ws.busy = False
        if not ws.engine.idle:
            self._step(ws)

    def run(self, requests: Requests, route: Callable[[int, int], None],
            progress: Callable[[int], None] | None = None) -> Outcome:
        """Feed every request to `route(rid, adapter)` at its arrival and run until all finish."""
        n = len(requests)
        self._adapter = adapters = requests.adapter.tolist()
        self._prompt, self._output = requests.prompt_tokens.tolist(), requests.output_tokens.tolist()
        self._first, self._finish, self._worker = [math.nan] * n, [math.nan] * n, [-1] * n
        self._session = requests.session.tolist() if requests.session is not None else []
        self._system = requests.system_tokens.tolist() if requests.system_tokens is not None else []
        times = requests.time.tolist()
        heap, inflight = self._heap, self.inflight
        i = 0
        while i < n or self._pending:
            if i < n and (not heap or times[i] <= heap[0][0]):
                self.now = times[i]
                inflight[adapters[i]] += 1
                route(i, adapters[i])
                i += 1
                if progress is not None and i % 4096 == 0:
                    progress(i)
                continue
            at, _, kind, payload = heapq.heappop(heap)
            self.now = at
            if kind != _TIMER:
                self._pending -= 1
            if kind == _STEP_END:
                self._step_end(*payload)
            elif kind == _COAST_END:
                self._coast_end(*payload)
            elif kind == _LOAD_DONE:
                self._loaded(*payload)
            else:
                period: float | None
                action: Callable[[float], None]
                period, action = payload
                action(at)
                if period is not None:
                    self._push(at + period, _TIMER, payload)
        engines = [ws.engine for ws in self.workers]
        return Outcome(arrival=requests.time, first_token=np.array(self._first), finish=np.array(self._finish),
                       worker=np.array(self._worker, dtype=np.int32),
                       busy_s=np.array([ws.busy_s for ws in self.workers]),
                       served=np.array([ws.served for ws in self.workers]),
                       slot_swaps=sum(e.slot_swaps for e in engines),
                       adapter_loads=sum(e.host_loads for e in engines),
                       placement_loads=self._placement_loads, placement_unloads=self._placement_unloads,
                       load_times=np.sort(np.array(self._load_times)),
                       prefix_queries=sum(e.prefix_queries for e in engines),
                       prefix_hits=sum(e.prefix_hits for e in engines))
