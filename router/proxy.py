"""The OpenAI-compatible request path: resolve, then {decide, execute, report} until answered, relay.

Where to send the request is router.core.routing's decision, on the state
router.core.fleetstate keeps; this module executes it (forward, or load then
ask again, or the client's error) and reports each outcome back as an event.

The body is forwarded byte for byte; only `model` (and `user`/`stream`, and the
prompt's text for router.core.prefix) are decoded. The one rewrite — `BASE@ADAPTER` or an alias to the adapter's own
name — re-encodes the top-level object with every other field kept as raw
JSON. A worker that fails before the client has seen a byte is retried once
on another holder (within the retry budget), and so is a stream whose worker
dies before its first chunk (the first token: the client's answer starts only
with it). After that, a cut stream migrates: it continues on another holder
from the text sent so far (router.core.continuation), on the same response,
up to `migration.max_migrations` times; a stream that cannot migrate ends with
an SSE error event, never a hang.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import msgspec

from router.auth import Authenticator
from router.config import RouterConfig
from router.core import routing
from router.core.continuation import KINDS, Continuation, Finish, Kind, StreamLedger, plan_migration
from router.core.events import AdapterMissing, Answered, RequestBegun, RequestEnded, Unreachable
from router.core.fleetstate import FleetState
from router.core.names import Target, resolve
from router.core.prefix import prompt_blocks
from router.core.retrybudget import RetryBudget
from router.core.routing import FIRST, Attempts, Load, LoadThen, Refusal, Reject, Via
from router.demand import DemandCounter
from router.errors import (
    NOT_JSON,
    AdapterFailed,
    AnswerCut,
    BadRequest,
    ColdStartTimeout,
    GatewayTimeout,
    NoWorkerAvailable,
    RouterError,
    UpstreamFailed,
)
from router.front import Answer, ClientRequest
from router.keyrefs import WorkerCredentials
from router.live import LiveConfig
from router.loads import Loader
from router.metrics import RouterMetrics
from router.upstream import (
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeout,
    origin_of,
)

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
"""The client's (when usable) or the router's own: forwarded to the worker, returned to the client."""
WORKER_HEADER = "x-lora-router-worker"
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "host", "content-length", "authorization",
})
NOT_FORWARDED = HOP_BY_HOP | {"expect", "content-encoding", REQUEST_ID_HEADER}
"""Request headers the router answers itself: `Expect` (the front sends the client its 100 Continue;
the worker gets the whole body at once) and `Content-Encoding` (the front decodes the body, so the
worker gets plain JSON); the request id is sent as the router settled it."""
ADAPTER_MISSING = "adapter_missing"
"""Retry reason of a 404 from a holder: the worker lost the adapter (restart, unload behind our back)."""
BUFFER_LIMIT = 1 << 20
"""Non-streaming bodies up to this size are read whole, so a worker dying mid-body can be retried."""


class RequestFields(msgspec.Struct):
    model: str
    stream: bool | None = None
    user: str | None = None


class _Message(msgspec.Struct):
    role: Any = None
    content: Any = None


class PromptFields(RequestFields):
    """The fields and the prompt's text, in one decode; a body whose `messages` has another shape is
    decoded as `RequestFields` alone and goes to the worker, which answers for it, as before."""

    messages: list[_Message] | None = None
    prompt: Any = None

    def parts(self) -> list[str]:
        """The prompt's text in order (roles included: the same words said by another role differ)."""
        if self.messages is not None:
            parts: list[str] = []
            for m in self.messages:
                parts.append(m.role if isinstance(m.role, str) else "")
                content = m.content
                if isinstance(content, str):
                    parts.append(content)
                elif isinstance(content, list):
                    parts.extend(c["text"] for c in content if isinstance(c, dict) and isinstance(c.get("text"), str))
            return parts
        return [self.prompt] if isinstance(self.prompt, str) else []


_decode_fields = msgspec.json.Decoder(RequestFields).decode
_decode_prompt = msgspec.json.Decoder(PromptFields).decode
_decode_top = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


class _Retry(Exception):
    """This attempt failed before the client saw a byte; another holder may answer."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _Migrate(Exception):
    """The stream was cut after the client saw part of it; `body` asks another holder for the rest."""

    def __init__(self, body: bytes) -> None:
        self.body = body


class _Stream:
    """The client's side of a streamed answer, kept across the workers that produce it."""

    __slots__ = ("answer", "ledger")

    def __init__(self, answer: Answer, ledger: StreamLedger) -> None:
        self.answer = answer
        self.ledger = ledger

    async def fail(self, message: str) -> Answer:
        await self.answer.write(_sse_error(message))
        self.answer.end()
        return self.answer


class _Job:
    """One client request on its way: what the next worker is sent, and the stream once it began."""

    __slots__ = ("body", "kind", "migrations", "original", "prompt", "stream")

    def __init__(self, body: bytes, kind: Kind | None, prompt: tuple[int, ...]) -> None:
        self.original = body
        self.body = body
        self.prompt = prompt
        """The prompt's blocks (router.core.prefix); a continuation's prompt starts with them."""
        self.kind = kind
        """How a stream of this route is continued; None: it is not."""
        self.migrations = 0
        self.stream: _Stream | None = None


class Proxy:
    """What the request path reads and reports to, handed in by the wiring (router.server)."""

    def __init__(self, live: LiveConfig, state: FleetState, *, upstream: UpstreamPool, loads: Loader,
                 metrics: RouterMetrics, demand: DemandCounter, credentials: WorkerCredentials,
                 rng: random.Random) -> None:
        self.live = live
        self.state = state
        self.upstream = upstream
        self.loads = loads
        self.metrics = metrics
        self.demand = demand
        self.credentials = credentials
        self.rng = rng
        self.retry_budget = RetryBudget(live.config.control.retry_budget_ratio)

    @property
    def config(self) -> RouterConfig:
        return self.live.config

    @property
    def auth(self) -> Authenticator:
        return self.live.auth

    async def handle(self, request: ClientRequest, answer: Answer) -> Answer:
        return await handle(request, answer, self)


async def handle(request: ClientRequest, answer: Answer, px: Proxy) -> Answer:
    caller = px.auth.caller(request.headers.get("Authorization"))
    request.tenant = caller.tenant
    body = await request.read_body(px.config.security.max_body_bytes, px.config.timeouts.client_body_s)
    fields = _parse_fields(body)
    target = resolve(
        fields.model, caller=caller, bases=px.state.bases() or _configured_base(px),
        catalog=px.state.catalog, aliases=px.config.aliases,
        sticky_key=fields.user or _header_text(request, px.config.sticky_header), rng=px.rng,
    )
    if target.model != fields.model:
        body = _rewrite_model(body, target.model)
    px.retry_budget.on_request()
    adapter = target.adapter
    if adapter is None:
        return await _forward(request, answer, px, target, body, ())
    request.adapter = adapter
    prompt = prompt_blocks(adapter, fields.parts()) if isinstance(fields, PromptFields) and \
        px.state.prefix_rules.index_blocks else ()
    px.demand.started(adapter)
    try:
        return await _forward(request, answer, px, target, body, prompt)
    finally:
        px.demand.finished(adapter)


def _header_text(request: ClientRequest, name: str) -> str:
    """A header as valid text: the front keeps undecodable bytes as lone surrogates, which no encoder accepts."""
    return request.headers.get(name, "").encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _configured_base(px: Proxy) -> frozenset[str]:
    return frozenset({px.config.base_model} if px.config.base_model else ())


def _parse_fields(body: bytes) -> RequestFields:
    try:
        return _decode_prompt(body)
    except msgspec.ValidationError:
        pass
    except NOT_JSON as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    try:
        return _decode_fields(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        param = "model" if "model" in text else ("stream" if "stream" in text else None)
        raise BadRequest(f"Invalid request body: {text}", param=param) from None
    except NOT_JSON as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None


def _rewrite_model(body: bytes, model: str) -> bytes:
    try:
        top = _decode_top(body)
    except NOT_JSON as exc:  # keys are decoded here, skipped in _parse_fields
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    top["model"] = msgspec.Raw(msgspec.json.encode(model))
    return msgspec.json.encode(top)


def _forwarded_headers(request: ClientRequest) -> str:
    """End-to-end request headers as one pre-encoded block; the client's key never reaches a worker."""
    drop = NOT_FORWARDED
    connection = request.headers.get("Connection")
    if connection:
        drop = drop | {t.strip().lower() for t in connection.split(",")}
    request_id = request.request_id
    return "".join(f"{k}: {v}\r\n" for k, v in request.headers.items if k.lower() not in drop) + (
        f"{REQUEST_ID_HEADER}: {request_id}\r\n" if request_id else "")


async def _forward(request: ClientRequest, answer: Answer, px: Proxy, target: Target, body: bytes,
                   prompt: tuple[int, ...]) -> Answer:
    """Ask the routing policy, do what it says, tell the state and `Attempts` how it went; again."""
    started = time.monotonic()
    headers = _forwarded_headers(request)
    tried = FIRST
    cold_since: float | None = None
    job = _Job(body, KINDS.get(request.path), prompt)
    while True:
        decision = routing.decide(target, px.state, tried, px.retry_budget, px.rng, prompt)
        try:
            if isinstance(decision, LoadThen):
                if decision.why is Load.COLD_START and cold_since is None:
                    cold_since = time.monotonic()
                tried = await _load(px, target, decision, tried, cold_since)
                continue
            if cold_since is not None:
                px.metrics.cold_start_wait.observe(time.monotonic() - cold_since)
                cold_since = None
            if isinstance(decision, Reject):
                raise _rejected(px, target, decision)
            if decision.retry:
                px.retry_budget.spend()
            if decision.via in (Via.OVERFLOW_HOLDER, Via.QUEUED):
                px.metrics.overflows.labels(decision.via.value).inc()
            if prompt and not decision.retry:
                px.metrics.prefix_pick("cached" if decision.via is Via.CACHED else "uncached").inc()
            return await _attempt(request, answer, px, target, decision.worker, job, headers, started,
                                  decision.last_chance)
        except _Retry as retry:
            assert not isinstance(decision, LoadThen | Reject)
            px.metrics.retries.labels(retry.reason).inc()
            tried = tried.forward_failed(decision.worker, retry.reason, retry_there=retry.reason == ADAPTER_MISSING)
        except _Migrate as cut:
            assert not isinstance(decision, LoadThen | Reject)
            tried = tried.stream_cut(decision.worker)
            job.migrations = tried.migrations
            job.body = cut.body
        except RouterError as exc:
            if job.stream is None:
                raise
            px.metrics.migrations.labels("failed").inc()  # the client has part of the answer: it ends in-band
            return await job.stream.fail(f"The worker stopped in the middle of the stream and no other worker "
                                         f"could continue it: {exc.message}")


async def _load(px: Proxy, target: Target, decision: LoadThen, tried: Attempts,
                cold_since: float | None) -> Attempts:
    """Run the load the policy asked for. A cold start waits at most the cold-start timeout in all (then
    503 with Retry-After, the load going on); an overflow load that fails or is slow just ends the overflow."""
    adapter = target.adapter
    assert adapter is not None
    timeout = px.config.timeouts.cold_start_timeout_s
    cold = cold_since is not None and decision.why is Load.COLD_START
    wait = timeout - (time.monotonic() - cold_since) if cold_since is not None and cold else timeout
    try:
        loaded = await px.loads.load(adapter, decision.worker, max(0.0, wait), cold=cold)
    except TimeoutError:
        if not cold:
            return tried.load_failed(decision.worker, decision.why)
        assert cold_since is not None
        px.metrics.cold_start_wait.observe(time.monotonic() - cold_since)
        px.metrics.cold_starts.labels(px.metrics.adapter(adapter), "timeout").inc()
        raise ColdStartTimeout(f"Adapter '{adapter}' is being loaded; retry shortly.",
                               headers={"Retry-After": str(max(1, int(timeout)))}) from None
    if not loaded:
        return tried.load_failed(decision.worker, decision.why)
    if not cold:
        px.metrics.overflows.labels(Via.OVERFLOW_LOADED.value).inc()
    return tried.loaded(decision.worker)


def _rejected(px: Proxy, target: Target, reject: Reject) -> RouterError:
    refusal = reject.refusal
    if refusal is Refusal.FAILED:
        return AdapterFailed(reject.message, param="model")
    if refusal in (Refusal.EXHAUSTED, Refusal.BUDGET):
        return UpstreamFailed(reject.message)
    if refusal is Refusal.UNLOADABLE and target.adapter is not None:
        px.metrics.cold_starts.labels(px.metrics.adapter(target.adapter), "failed").inc()
    return NoWorkerAvailable(reject.message, headers={"Retry-After": "5" if target.adapter else "1"})


async def _attempt(request: ClientRequest, answer: Answer, px: Proxy, target: Target, worker: str, job: _Job,
                   headers: str, started: float, last_chance: bool) -> Answer:
    state = px.state
    origin = origin_of(state.workers[worker].url)
    request.worker = worker
    # the front decodes header bytes as utf-8 with surrogateescape; encoding back the same way
    # forwards them byte for byte (latin-1 raised on any non-ASCII header byte: a 500).
    body = job.body
    head = (f"POST {request.path_qs} HTTP/1.1\r\nHost: {origin.host_header}\r\n"
            f"Content-Length: {len(body)}\r\n{headers}{px.credentials.line(worker)}\r\n"
            ).encode("utf-8", "surrogateescape")
    adapter = target.adapter
    state.apply(RequestBegun(worker, adapter, job.prompt))
    try:
        try:
            upstream = await px.upstream.request(origin.host, origin.port, origin.tls, head, body)
        except UpstreamTimeout as exc:
            _unreachable(px, worker, exc)
            raise _timed_out(target) from None
        except UpstreamError as exc:
            _unreachable(px, worker, exc)
            raise _Retry("connect") from None
        try:
            status = upstream.status
            _answered(px, worker, status)
            if status == 404 and adapter is not None:
                state.apply(AdapterMissing(worker, adapter))
            if not last_chance and (status >= 500 or (status == 404 and adapter is not None)):
                upstream.close()
                raise _Retry(ADAPTER_MISSING if status == 404 else "worker_5xx")
            await _relay(request, answer, px, target, worker, upstream, job)
        except AnswerCut:
            upstream.close()
            px.metrics.answered(request.path, px.metrics.adapter(adapter), 502).inc()
            raise
        except BaseException:
            upstream.close()
            raise
        upstream.release()
    finally:
        state.apply(RequestEnded(worker, adapter))
    label = px.metrics.adapter(adapter)
    px.metrics.answered(request.path, label, answer.status).inc()
    px.metrics.took(label).observe(time.monotonic() - started)
    return answer


def _response_headers(px: Proxy, worker: str, upstream: UpstreamResponse) -> list[tuple[str, str]]:
    headers = [(k, v) for k, v in upstream.headers if k.lower() not in HOP_BY_HOP]
    if px.config.security.worker_header:
        headers.append((WORKER_HEADER, worker))
    return headers


async def _relay(request: ClientRequest, answer: Answer, px: Proxy, target: Target, worker: str,
                 upstream: UpstreamResponse, job: _Job) -> None:
    """Relay the answer. A non-streaming answer is read whole up to BUFFER_LIMIT, so a worker dying
    in it is retried elsewhere; past that, or for a stream, the client has the head already: a stream
    cut then migrates (or ends with an SSE error event), any other answer cut then ends with the connection
    closed, so the client sees a truncated body fail rather than succeed."""
    streaming = upstream.content_type.startswith("text/event-stream")
    if job.stream is not None:
        await _continue(request, px, target, worker, upstream, job, job.stream, streaming)
        return
    headers = _response_headers(px, worker, upstream)
    first = b""
    try:
        if streaming:
            first = await upstream.next_chunk() or b""
        else:
            buffered = await _read_up_to(upstream, BUFFER_LIMIT)
            if upstream.complete():
                if upstream.status == 200:
                    px.metrics.count_usage(request.tenant, buffered)
                answer.respond(upstream.status, headers, buffered)
                return
            first = buffered
    except UpstreamTimeout as exc:
        _unreachable(px, worker, exc)
        raise _timed_out(target) from None
    except UpstreamError as exc:  # nothing sent yet (for a stream: no token): another holder may answer
        _unreachable(px, worker, exc)
        raise _Retry("body_cut") from None
    # a cut stays visible as a short body: a known length is kept
    answer.start(upstream.status, headers, None if streaming else upstream.content_length)
    rules = px.config.migration
    if streaming and upstream.status == 200 and job.kind is not None and rules.max_migrations:
        job.stream = _Stream(answer, StreamLedger(job.kind, rules.max_kept_bytes))
        await _relay_stream(request, px, target, worker, upstream, job, job.stream, first)
        return
    try:
        await answer.write(first)
        while (chunk := await upstream.next_chunk()) is not None:
            await answer.write(chunk)
    except UpstreamError as exc:
        _unreachable(px, worker, exc)
        if not streaming:
            answer.abort()
            raise AnswerCut from None
        await answer.write(_sse_error("The worker stopped in the middle of the stream."))
    answer.end()


async def _continue(request: ClientRequest, px: Proxy, target: Target, worker: str, upstream: UpstreamResponse,
                    job: _Job, stream: _Stream, streaming: bool) -> Answer:
    """A continuation's answer: its events join the stream the client is reading, or, when the worker
    refused the continuation, the stream ends with an SSE error event."""
    if upstream.status == 200 and streaming:
        return await _relay_stream(request, px, target, worker, upstream, job, stream, b"")
    upstream.close()
    px.metrics.migrations.labels("failed").inc()
    log.warning("request %s: worker %s answered the continuation with %d; the stream ends with an error",
                request.request_id, worker, upstream.status)
    return await stream.fail(f"The worker stopped in the middle of the stream and its continuation was refused "
                             f"(status {upstream.status}).")


async def _relay_stream(request: ClientRequest, px: Proxy, target: Target, worker: str, upstream: UpstreamResponse,
                        job: _Job, stream: _Stream, first: bytes) -> Answer:
    """Relay whole SSE events through the ledger; a cut hands the rest of the answer to another holder."""
    ledger, response = stream.ledger, stream.answer
    try:
        if first:
            out = ledger.feed(first)
            if out:
                await response.write(out)
        while (chunk := await upstream.next_chunk()) is not None:
            out = ledger.feed(chunk)
            if out:
                await response.write(out)
    except UpstreamError as exc:
        _unreachable(px, worker, exc)
        return await _after_cut(request, px, target, worker, job, stream, exc.cut)
    rest = ledger.flush()
    if rest:
        await response.write(rest)
    response.end()
    return response


async def _after_cut(request: ClientRequest, px: Proxy, target: Target, worker: str, job: _Job, stream: _Stream,
                     cut: str) -> Answer:
    """The worker's stream broke: continue it elsewhere (raises _Migrate), finish it, or end it in-band."""
    ledger = stream.ledger
    rules = px.config.migration
    plan = plan_migration(job.original, ledger, cut, job.migrations, rules.rules())
    request_id = request.request_id
    if isinstance(plan, Continuation):
        plan = await _counted(px, target, worker, job, ledger, cut, plan)
        px.metrics.migrations.labels("continued").inc()
        px.metrics.migrated_tokens.inc(plan.tokens)
        log.warning("request %s: stream cut on worker %s (%s) after %d tokens; continuing on another worker "
                    "(migration %d of at most %d)", request_id, worker, cut, plan.tokens, job.migrations + 1,
                    rules.max_migrations)
        ledger.continue_elsewhere(plan.tokens)
        raise _Migrate(plan.body)
    if isinstance(plan, Finish):
        usage = None
        if plan.usage_wanted:
            prompt_tokens = await _prompt_tokens(px, target, worker, plan.tokenize_body)
            if prompt_tokens is None:
                px.metrics.migrations.labels("failed").inc()
                return await stream.fail("The worker stopped after the last token, and no other worker could "
                                         "count the prompt's tokens for the usage.")
            usage = ledger.usage(prompt_tokens)
        px.metrics.migrations.labels("finished").inc()
        log.warning("request %s: stream cut on worker %s (%s) after its last token; the router ends it",
                    request_id, worker, cut)
        await stream.answer.write(ledger.closing(usage))
        stream.answer.end()
        return stream.answer
    px.metrics.migrations.labels("not_migrated").inc()
    log.warning("request %s: stream cut on worker %s (%s) after %d tokens, not migrated: %s", request_id, worker,
                cut, ledger.tokens, plan.reason)
    return await stream.fail("The worker stopped in the middle of the stream.")


async def _counted(px: Proxy, target: Target, dead: str, job: _Job, ledger: StreamLedger, cut: str,
                   plan: Continuation) -> Continuation:
    """The continuation with its limits reduced by the tokens the kept text really holds (a worker's
    /tokenize of the prompt before and after), in the rendering the tokenizer reads as the answer so far
    (a chat message's leading whitespace stripped when keeping it adds a token); as planned from the
    chunks when a count fails."""
    counts = [await _prompt_tokens(px, target, dead, body) for body in plan.counting]
    before, after = counts[0], counts[1]
    if before is None or after is None or after < before:
        return plan
    stripped = counts[2] if len(counts) > 2 else None
    if stripped is not None and before <= stripped < after:
        tokens, strip = stripped - before, True
    else:
        tokens, strip = after - before, False
    if tokens == plan.tokens and not strip:
        return plan
    exact = plan_migration(job.original, ledger, cut, job.migrations, px.config.migration.rules(),
                           tokens=tokens, strip=strip)
    return exact if isinstance(exact, Continuation) else plan


async def _prompt_tokens(px: Proxy, target: Target, dead: str, body: bytes) -> int | None:
    """The prompt's token count from another holder's /tokenize (vLLM's, as its usage counts them)."""
    decision = routing.decide(target, px.state, FIRST.stream_cut(dead), px.retry_budget, px.rng)
    if not isinstance(decision, routing.Forward):
        return None
    origin = origin_of(px.state.workers[decision.worker].url)
    head = (f"POST /tokenize HTTP/1.1\r\nHost: {origin.host_header}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{px.credentials.line(decision.worker)}\r\n").encode()
    try:
        upstream = await px.upstream.request(origin.host, origin.port, origin.tls, head, body)
    except UpstreamError:
        return None
    try:
        answer = await upstream.read()
    except UpstreamError:
        upstream.close()
        return None
    upstream.release()
    if upstream.status != 200:
        return None
    try:
        return _decode_count(answer).count
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


class _Count(msgspec.Struct):
    count: int


_decode_count = msgspec.json.Decoder(_Count).decode


async def _read_up_to(upstream: UpstreamResponse, limit: int) -> bytes:
    """The answer's first bytes: all of it when it ends within `limit`."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await upstream.next_chunk()
        if chunk is None:
            break
        parts.append(chunk)
        size += len(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _timed_out(target: Target) -> GatewayTimeout:
    return GatewayTimeout(f"The worker serving model '{target.model}' did not answer in time; "
                          "the request was not sent again, since the worker may still be working on it.")


def _sse_error(message: str) -> bytes:
    error = UpstreamFailed(message)
    return b"data: " + error.body() + b"\n\n"


def _unreachable(px: Proxy, worker: str, exc: BaseException) -> None:
    """Passive health: out of rotation at once; the prober brings it back when /health answers."""
    log.warning("worker %s failed: %s", worker, type(exc).__name__)
    if px.state.apply(Unreachable(worker, time.monotonic())).changed:
        px.metrics.worker_healthy.labels(worker).set(0)


def _answered(px: Proxy, worker: str, status: int) -> None:
    """5xx answers in a row take a worker out of rotation (router.core.health), others reset the count."""
    if px.state.apply(Answered(worker, status, time.monotonic())).changed:
        log.warning("worker %s taken out of rotation after consecutive 5xx answers", worker)
        px.metrics.worker_healthy.labels(worker).set(0)
