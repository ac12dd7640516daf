"""An open-loop client: requests at a fixed rate whatever the answers, every answer counted.

Open loop on purpose: a closed loop slows down when the router does and hides
exactly the failures a fault causes. Each request is bounded by `timeout_s`,
so a hang is counted as one (HUNG) instead of stalling the run; sending stops
at `duration_s` or `max_requests`, whichever comes first, and stragglers are
awaited at most `timeout_s`.

A stream counts as OK only if it ends with `data: [DONE]` and its text is the
answer the simulated worker gives that prompt (bench.worker.textgen: the same
tokens whichever worker, or workers, produced them); one that ends with
`[DONE]` but other text is WRONG (a migrated stream that lost or repeated a
token); one that ends with an SSE error event is CUT (a worker lost mid-stream
and the stream not migrated); one that just stops is FAILED.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence

import aiohttp
import msgspec

from bench.worker import textgen

FAILURE_SAMPLES = 8
PROMPT = "chaos"
WORKER_HEADER = "x-lora-router-worker"


class Outcome(enum.Enum):
    OK = "ok"
    CUT = "cut"
    WRONG = "wrong"
    FAILED = "failed"
    HUNG = "hung"


class Request(msgspec.Struct, frozen=True):
    """One request to send; `group` is what the scenario reports it under (e.g. placed vs cold)."""

    model: str
    stream: bool = False
    max_tokens: int = 8
    group: str = "all"


class Tally:
    """Counts and latencies per outcome and group; the first few failures kept verbatim."""

    def __init__(self) -> None:
        self.outcomes: Counter[tuple[str, Outcome]] = Counter()
        self.statuses: Counter[int] = Counter()
        self.latencies: dict[str, list[float]] = {}
        self.failures: list[str] = []
        self.served_by: Counter[tuple[str, str]] = Counter()
        """(group, worker id from x-lora-router-worker) -> successful answers."""
        self.unshaped_errors = 0
        """Error answers not in OpenAI's shape ({"error": {"message", "type", "param", "code"}})."""

    def add(self, request: Request, outcome: Outcome, status: int, latency_s: float, detail: str = "") -> None:
        self.outcomes[(request.group, outcome)] += 1
        self.statuses[status] += 1
        if outcome is Outcome.OK:
            self.latencies.setdefault(request.group, []).append(latency_s)
        elif len(self.failures) < FAILURE_SAMPLES:
            self.failures.append(f"{outcome.value} {request.model} stream={request.stream} {status}: {detail[:200]}")

    def merge(self, other: Tally) -> Tally:
        """Fold another client's counts into this one (groups kept apart); returns self."""
        self.outcomes.update(other.outcomes)
        self.served_by.update(other.served_by)
        self.unshaped_errors += other.unshaped_errors
        self.statuses.update(other.statuses)
        for group, values in other.latencies.items():
            self.latencies.setdefault(group, []).extend(values)
        self.failures.extend(other.failures[:max(0, FAILURE_SAMPLES - len(self.failures))])
        return self

    def count(self, outcome: Outcome, group: str | None = None) -> int:
        return sum(n for (g, o), n in self.outcomes.items() if o is outcome and group in (None, g))

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    def percentile(self, q: float, groups: Collection[str] | None = None) -> float | None:
        """Of the successful requests in `groups` (all if None)."""
        values = sorted(v for g, vs in self.latencies.items() if groups is None or g in groups for v in vs)
        return values[min(len(values) - 1, int(q * len(values)))] if values else None


class OpenLoop:
    """Send `pick(i)` to the routers in `targets` (round robin) at `rate` per second.

    `targets` and `rate` may be changed while it runs (a scenario stops sending
    to a router it killed, or raises demand); `stop()` ends sending early.
    """

    def __init__(self, session: aiohttp.ClientSession, targets: Sequence[str], pick: Callable[[int], Request],
                 rate: float, timeout_s: float = 30.0) -> None:
        self.session = session
        self.targets = list(targets)
        self.pick = pick
        self.rate = rate
        self.timeout_s = timeout_s
        self.tally = Tally()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, duration_s: float, max_requests: int) -> OpenLoop:
        self._task = asyncio.create_task(self._run(duration_s, max_requests), name="chaos-load")
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def finished(self) -> bool:
        return self._task is not None and self._task.done()

    async def wait(self, timeout_s: float) -> None:
        """Return when sending and answers are over, or after `timeout_s`, whichever is first."""
        assert self._task is not None
        await asyncio.wait([self._task], timeout=timeout_s)

    async def send(self, requests: Sequence[Request]) -> None:
        """Send these now, besides the paced ones, into the same tally; return once all are answered."""
        await asyncio.gather(*(self._one(self.targets[0], r) for r in requests))

    async def finish(self) -> Tally:
        """Wait for sending to end and every answer (or its timeout)."""
        assert self._task is not None
        await self._task
        return self.tally

    async def _run(self, duration_s: float, max_requests: int) -> None:
        pending: set[asyncio.Task[None]] = set()
        end = time.monotonic() + duration_s
        next_at = time.monotonic()
        for i in range(max_requests):
            if self._stop.is_set() or next_at >= end:
                break
            delay = next_at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            task = asyncio.create_task(self._one(self.targets[i % len(self.targets)], self.pick(i)))
            pending.add(task)
            task.add_done_callback(pending.discard)
            next_at += 1.0 / self.rate
        if pending:
            await asyncio.wait(pending)

    async def _one(self, router: str, request: Request) -> None:
        body = {"model": request.model, "prompt": PROMPT, "max_tokens": request.max_tokens,
                "ignore_eos": True, "stream": request.stream}
        started = time.monotonic()
        status = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.session.post(router + "/v1/completions", json=body) as r:
                    status = r.status
                    if status != 200:
                        text = await r.text()
                        self.tally.add(request, Outcome.FAILED, status, 0.0, text)
                        self.tally.unshaped_errors += not _openai_error(text, status)
                        return
                    self.tally.served_by[(request.group, r.headers.get(WORKER_HEADER, ""))] += 1
                    if not request.stream:
                        await r.read()
                        self.tally.add(request, Outcome.OK, status, time.monotonic() - started)
                        return
                    outcome, detail = await _read_stream(r, textgen.answer(request.model, PROMPT,
                                                                           request.max_tokens))
                    self.tally.add(request, outcome, status, time.monotonic() - started, detail)
        except TimeoutError:
            self.tally.add(request, Outcome.HUNG, status, self.timeout_s, f"no end within {self.timeout_s}s")
        except aiohttp.ClientError as exc:
            self.tally.add(request, Outcome.FAILED, status, 0.0, repr(exc))


class _Choice(msgspec.Struct):
    text: str = ""


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []


_decode_chunk = msgspec.json.Decoder(_Chunk).decode


async def _read_stream(response: aiohttp.ClientResponse, expected: str) -> tuple[Outcome, str]:
    last = b""
    text: list[str] = []
    async for line in response.content:
        line = line.strip()
        if not line:
            continue
        if line == b"data: [DONE]":
            got = "".join(text)
            if got != expected:
                return Outcome.WRONG, f"text {got[:80]!r} is not its reference {expected[:80]!r}"
            return Outcome.OK, ""
        if line.startswith(b'data: {"error"'):
            return Outcome.CUT, line.decode(errors="replace")
        if line.startswith(b"data: "):
            text += [c.text for c in _decode_chunk(line[6:]).choices]
        last = line
    return Outcome.FAILED, f"stream ended without [DONE] or an error event after {last[:80]!r}"


def _openai_error(text: str, status: int) -> bool:
    try:
        error = msgspec.json.decode(text)["error"]
        return {"message", "type", "param", "code"} <= error.keys() and error["code"] == status
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        return False
