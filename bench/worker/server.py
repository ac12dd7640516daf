"""The simulated worker's HTTP surface: vLLM's OpenAI server, byte for byte where a client can see it."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import msgspec
from aiohttp import web

from bench.perfmodel import PerfParams
from bench.worker import textgen
from bench.worker.engine import LiveEngine, prompt_blocks
from bench.worker.metrics import WorkerMetrics
from bench.worker.registry import AdapterRegistry, RegistryError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


class WorkerOptions(msgspec.Struct, kw_only=True):
    model: str
    max_loras: int = 1
    max_cpu_loras: int | None = None
    max_lora_rank: int = 16
    max_num_seqs: int = 64
    max_model_len: int = 4096
    api_key: str | None = None
    lora_modules: dict[str, str] = {}
    speed: float = 1.0
    fail_rate: float = 0.0
    slow_s: float = 0.0
    early_hints: bool = False
    cut_rate: float = 0.0
    die_after_tokens: int = 0
    seed: int = 0


class LoadRequest(msgspec.Struct):
    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadRequest(msgspec.Struct):
    lora_name: str
    lora_int_id: int | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = False


class GenerateRequest(msgspec.Struct):
    model: str
    prompt: str | list[str] | None = None
    messages: list[dict[str, object]] | None = None
    input: str | list[str] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    add_generation_prompt: bool | None = None
    continue_final_message: bool = False


ENGINE_TASK = web.AppKey("engine_task", asyncio.Task[None])
"""The engine's loop, kept on the app so that it is not collected while it runs."""

EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </v1/models>; rel=preload\r\n\r\n"
"""An interim answer before the real one (fault injection): HTTP/1.1 lets a server send any number."""


class Reply(Exception):
    """An early answer (a vLLM error body) raised from deep in a handler; the middleware sends it."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def runtime_updates_allowed() -> bool:
    return os.environ.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "").strip().lower() in ("1", "true")


def error_body(status: int, message: str, type_: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": status}}
    return web.Response(status=status, body=msgspec.json.encode(body), content_type="application/json")


class _UnlabelledResponse(web.Response):
    """A body with no Content-Type, as FastAPI sends for vLLM's load/unload answers.

    aiohttp labels every non-empty body application/octet-stream while
    preparing headers; the label is taken off again before they are written.
    """

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall("Content-Type", None)


def plain(text: str) -> web.Response:
    return _UnlabelledResponse(status=200, body=text.encode())


class SimulatedWorker:
    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.params = PerfParams(max_num_seqs=options.max_num_seqs, max_loras=options.max_loras,
                                 max_cpu_loras=options.max_cpu_loras, speed=options.speed)
        self.engine = LiveEngine(self.params)
        self.registry = AdapterRegistry(options.max_lora_rank, options.model)
        self.started = int(time.time())
        self.metrics = WorkerMetrics(options.model, options.max_loras, time.time())
        self.rng = random.Random(options.seed)
        self._tokens = 0
        for name, path in options.lora_modules.items():
            self.registry.add(name, path, self.registry.check(name, path, False), self.started)

    def app(self) -> web.Application:
        # vLLM (FastAPI on uvicorn) reads a body of any size; aiohttp's default cap (1 MiB, plain-text 413) is not
        # vLLM's: an oversized prompt is refused by the context-length check instead, as vLLM does.
        app = web.Application(middlewares=[self._auth, self._not_found_as_json], client_max_size=sys.maxsize)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/tokenize", self.tokenize)
        if runtime_updates_allowed():
            app.router.add_post("/v1/load_lora_adapter", self.load)
            app.router.add_post("/v1/unload_lora_adapter", self.unload)
        app.on_startup.append(self._start_engine)
        return app

    async def _start_engine(self, app: web.Application) -> None:
        app[ENGINE_TASK] = asyncio.get_running_loop().create_task(self.engine.run())

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        key = self.options.api_key
        if key and request.path.startswith("/v1") and request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    @web.middleware
    async def _not_found_as_json(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except Reply as reply:
            return reply.response
        except web.HTTPNotFound:
            return web.json_response({"detail": "Not Found"}, status=404)
        except web.HTTPMethodNotAllowed:
            return web.json_response({"detail": "Method Not Allowed"}, status=405)

    # -- plain routes ------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def prometheus(self, _request: web.Request) -> web.Response:
        return web.Response(text=self.metrics.render(self.engine.model, self.engine.busy_s),
                            content_type="text/plain", charset="utf-8")

    async def models(self, _request: web.Request) -> web.Response:
        cards = [self._card(self.options.model, self.options.model, None, self.started, self.options.max_model_len)]
        for a in self.registry.adapters.values():
            cards.append(self._card(a.name, a.path, self.options.model, a.created, None))
        return web.Response(body=msgspec.json.encode({"object": "list", "data": cards}),
                            content_type="application/json")

    def _card(self, id_: str, root: str, parent: str | None, created: int, max_len: int | None) -> dict[str, object]:
        permission = {"id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": created,
                      "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                      "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                      "organization": "*", "group": None, "is_blocking": False}
        return {"id": id_, "object": "model", "created": created, "owned_by": "vllm", "root": root,
                "parent": parent, "max_model_len": max_len, "permission": [permission]}

    # -- runtime LoRA ------------------------------------------------------------------
    async def load(self, request: web.Request) -> web.Response:
        parsed = await self._decode(request, LoadRequest)
        try:
            rank = self.registry.check(parsed.lora_name, parsed.lora_path, parsed.load_inplace)
        except RegistryError as exc:
            return error_body(exc.status, exc.message, exc.type, exc.param)
        await asyncio.sleep(self.engine.model.load_cost_s())
        self.registry.add(parsed.lora_name, parsed.lora_path, rank, int(time.time()))
        return plain(f"Success: LoRA adapter '{parsed.lora_name}' added successfully.")

    async def unload(self, request: web.Request) -> web.Response:
        parsed = await self._decode(request, UnloadRequest)
        try:
            self.registry.remove(parsed.lora_name, parsed.lora_int_id)
        except RegistryError as exc:
            return error_body(exc.status, exc.message, exc.type, exc.param)
        self.engine.model.forget_host(parsed.lora_name)
        return plain(f"Success: LoRA adapter '{parsed.lora_name}' removed successfully.")

    async def _decode(self, request: web.Request, type_: type[T]) -> T:
        raw = await request.read()
        try:
            return msgspec.json.decode(raw, type=type_)
        except msgspec.ValidationError as exc:
            text = str(exc)
            field = text.split("`$.", 1)[1].split("`", 1)[0] if "`$." in text else None
            if field is None and "missing required field" in text:
                field = text.rsplit("`", 2)[-2]
            raise Reply(error_body(400, "Field required" if "missing" in text else text, "Bad Request",
                                   f"body.{field}" if field else None)) from None
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # not UTF-8, or nested too deeply
            raise Reply(error_body(400, "JSON decode error", "Bad Request", "body")) from None

    # -- inference ---------------------------------------------------------------------
    def _resolve(self, model: str) -> str | None:
        """The adapter a model name means (None for the base); unknown names answer vLLM's 404."""
        if model == self.options.model:
            return None
        if model in self.registry.adapters:
            return model
        raise Reply(error_body(404, f"The model `{model}` does not exist. Valid aliases: {self.options.model}.",
                               "NotFoundError", "model"))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        self.metrics.received += 1
        req = await self._decode(request, GenerateRequest)
        adapter = self._resolve(req.model)
        if chat and req.continue_final_message and req.add_generation_prompt:
            return error_body(400, "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                              "BadRequestError")
        if self.options.slow_s:
            await asyncio.sleep(self.options.slow_s)
        if self.options.fail_rate and self.rng.random() < self.options.fail_rate:
            return error_body(500, "Simulated engine failure.", "InternalServerError")
        prompt = _prompt_text(req, chat)
        n_prompt = textgen.prompt_tokens(prompt)
        max_tokens = self._max_tokens(req, n_prompt)
        rendered = _context_words(req, chat)
        state = textgen.context(req.model, rendered)
        blocks = prompt_blocks(req.model, rendered, self.params.block_tokens, n_prompt)
        n_out = max_tokens if req.ignore_eos else textgen.natural_length(state, max_tokens)
        finish = "length" if n_out >= max_tokens else "stop"
        usage: dict[str, object] = {"prompt_tokens": n_prompt, "total_tokens": n_prompt + n_out,
                                    "completion_tokens": n_out, "prompt_tokens_details": None}
        # vLLM names the completion after the caller's X-Request-Id when there is one.
        ident = ("chatcmpl-" if chat else "cmpl-") + request.headers.get("X-Request-Id", uuid.uuid4().hex)
        created = int(time.time())
        words = self._words(self.engine.generate(adapter, n_prompt, n_out, blocks), state)
        self.metrics.served_once = True
        if self.options.early_hints:
            await request.writer.write(EARLY_HINTS)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = _sse_events(words, chat, req.model, ident, created, finish, n_out,
                             usage if include_usage else None) if req.stream else None
        if self.options.cut_rate and self.rng.random() < self.options.cut_rate:
            if events is not None:
                return await _cut(request, "text/event-stream; charset=utf-8", b"".join([e async for e in events]))
            text = "".join([" " + w async for w in words])
            return await _cut(request, "application/json", msgspec.json.encode(
                _final(chat, ident, created, req.model, text, finish, usage)))
        if events is not None:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
            await response.prepare(request)
            async for event in events:
                await response.write(event)
            await response.write_eof()
            return response
        text = "".join([" " + w async for w in words])
        return web.Response(body=msgspec.json.encode(
            _final(chat, ident, created, req.model, text, finish, usage)), content_type="application/json")

    async def _words(self, indices: AsyncIterator[int], state: int) -> AsyncIterator[str]:
        """The answer's words as the engine emits its tokens."""
        words = textgen.tokens(state)
        async for _ in indices:
            self._tokens += 1
            yield next(words)
            self._maybe_die()

    def _maybe_die(self) -> None:
        """Fault injection: SIGKILL this very process when the token after the `die_after_tokens`-th is asked
        for: a stream has then written the chunk holding that token (the kernel may still lose the last
        chunks with the connection, as with any crash), so a test cuts an answer after at most k tokens."""
        limit = self.options.die_after_tokens
        if limit and self._tokens >= limit:
            os.kill(os.getpid(), signal.SIGKILL)

    def _max_tokens(self, req: GenerateRequest, prompt_tokens: int) -> int:
        """vLLM's checks, in its order and words: the prompt must fit the context, max_tokens must be >= 1."""
        limit = self.options.max_model_len
        if prompt_tokens > limit:
            raise Reply(error_body(
                400, f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                     f"{prompt_tokens} input tokens, which exceeds this limit even without any output tokens. "
                     f"Please reduce the length of the input prompt. (parameter=input_tokens, value={prompt_tokens})",
                "BadRequestError", "input_tokens"))
        asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        tokens = min(limit - prompt_tokens, 16 if asked is None else asked)
        if tokens < 1:
            raise Reply(error_body(400, f"max_tokens must be at least 1, got {tokens}. "
                                        f"(parameter=max_tokens, value={tokens})", "BadRequestError", "max_tokens"))
        return tokens

    async def embeddings(self, request: web.Request) -> web.Response:
        req = await self._decode(request, GenerateRequest)
        self._resolve(req.model)
        inputs = req.input if isinstance(req.input, list) else [req.input or ""]
        data = [{"index": i, "object": "embedding",
                 "embedding": [((hash((req.model, text, j)) % 2000) - 1000) / 1000.0 for j in range(8)]}
                for i, text in enumerate(inputs)]
        tokens = sum(textgen.prompt_tokens(t) for t in inputs)
        body = {"id": f"embd-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                "model": req.model, "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "completion_tokens": 0,
                          "prompt_tokens_details": None}}
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    async def tokenize(self, request: web.Request) -> web.Response:
        parsed = await self._decode(request, GenerateRequest)
        text = _prompt_text(parsed, chat=parsed.messages is not None)
        ids = [hash(w) % 32000 for w in text.split()]
        return web.json_response({"count": len(ids), "max_model_len": self.options.max_model_len,
                                  "tokens": ids, "token_strs": None})


def _context_words(req: GenerateRequest, chat: bool) -> list[str]:
    """What the model reads, as a chat template renders it: each message opened by its role, then the
    assistant's turn opened (add_generation_prompt, the default) unless the final message is continued.
    A conversation's next turn (its messages, the answer, a new message) extends this rendering, so its
    prefix-cache blocks (`prompt_blocks`) start with the previous turn's."""
    if not chat:
        return _prompt_text(req, chat).split()
    words = []
    for message in req.messages or []:
        words.append(f"<{message.get('role')}>")
        words += str(message.get("content", "")).split()
    if req.add_generation_prompt is not False and not req.continue_final_message:
        words.append("<assistant>")
    return words


def _prompt_text(req: GenerateRequest, chat: bool) -> str:
    if chat and req.messages:
        return " ".join(str(m.get("content", "")) for m in req.messages)
    if isinstance(req.prompt, list):
        return " ".join(req.prompt)
    return req.prompt or ""


async def _sse_events(words: AsyncIterator[str], chat: bool, model: str, ident: str, created: int,
                      finish: str, n_out: int, usage: dict[str, object] | None) -> AsyncIterator[bytes]:
    """vLLM's stream; a chat's opening role chunk goes with the first token, as vLLM sends it on the engine's
    first output (after prefill), so a client's first data chunk marks the first token either way."""
    obj = "chat.completion.chunk" if chat else "text_completion"
    i = 0
    async for word in words:
        if chat and i == 0:
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                     "finish_reason": None}
            yield _sse({"id": ident, "object": obj, "created": created, "model": model, "choices": [first]})
        piece = " " + word
        last = i == n_out - 1
        i += 1
        choice: dict[str, object] = ({"index": 0, "delta": {"content": piece}, "logprobs": None,
                                      "finish_reason": finish if last else None} if chat else
                                     {"index": 0, "text": piece, "logprobs": None,
                                      "finish_reason": finish if last else None, "stop_reason": None})
        yield _sse({"id": ident, "object": obj, "created": created, "model": model, "choices": [choice]})
    if usage is not None:
        yield _sse({"id": ident, "object": obj, "created": created, "model": model, "choices": [],
                    "usage": usage})
    yield b"data: [DONE]\n\n"


async def _cut(request: web.Request, content_type: str, answer: bytes) -> web.StreamResponse:
    """Half an answer, then the connection closed: a worker dying mid-body (fault injection).

    Sent chunked, with no Content-Length, so a proxy cannot tell the answer is short from its size.
    """
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    await response.write(answer[: len(answer) // 2])
    assert request.transport is not None
    request.transport.close()
    return response


def _sse(payload: dict[str, object]) -> bytes:
    return b"data: " + msgspec.json.encode(payload) + b"\n\n"


def _final(chat: bool, ident: str, created: int, model: str, text: str, finish: str,
           usage: dict[str, object]) -> dict[str, object]:
    if chat:
        choice: dict[str, object] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None, "annotations": None,
                        "audio": None, "function_call": None, "tool_calls": [], "reasoning_content": None},
            "logprobs": None, "finish_reason": finish, "stop_reason": None, "token_ids": None}
        return {"id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [choice], "service_tier": None, "system_fingerprint": None, "usage": usage,
                "prompt_logprobs": None, "prompt_token_ids": None, "kv_transfer_params": None}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None,
              "token_ids": None, "prompt_logprobs": None, "prompt_token_ids": None}
    return {"id": ident, "object": "text_completion", "created": created, "model": model, "choices": [choice],
            "service_tier": None, "system_fingerprint": None, "usage": usage, "kv_transfer_params": None}
