"""Request migration: what a relayed stream has carried so far, and the request that continues it elsewhere.

A stream whose worker dies after the client has seen tokens cannot be sent
again from the start: the client would get those tokens twice. It can be
continued: the prompt plus the text generated so far, asked of another holder
(completions: the prompt extended; chat: the partial assistant message
continued, vLLM's `continue_final_message` with `add_generation_prompt` off),
with the token limits reduced by what was generated. At temperature 0 the
continuation is token for token what the uninterrupted answer would have been
(up to the tokenizer reading the kept text back the way it wrote it); with
sampling it continues from the kept text with the request's own parameters
(and `seed`), which is not the same draw as an uninterrupted run.

`StreamLedger` sits between the worker's stream and the client: it forwards
whole SSE events only (so a cut never leaves half an event with the client),
keeps the text and counts the tokens (a chunk with text is one token: vLLM
sends one chunk per engine step and request). After a migration it rewrites the
continuation's events so the client sees one answer: the first answer's `id`
and `created`, no second role chunk, usage covering the whole answer, `[DONE]`
once. `plan_migration` says whether a cut stream continues, and with what body.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import msgspec

CUTS = ("closed", "malformed", "timeout")
"""How a stream can break: the worker closed or reset the connection (it died), sent bytes that are not
HTTP (chunked-encoding error), or went silent past the read timeout."""
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""vLLM's (and OpenAI's) max_tokens for /v1/completions when the request names none."""


class Kind(Enum):
    CHAT = "chat"
    COMPLETION = "completion"


KINDS = {"/v1/chat/completions": Kind.CHAT, "/v1/completions": Kind.COMPLETION}
"""The paths whose streams can be continued, and how."""


class MigrationRules(msgspec.Struct, frozen=True, kw_only=True):
    """The config's `migration` knobs (router.config.MigrationConfig)."""

    max_migrations: int = 3
    max_kept_bytes: int = 1 << 20
    on: frozenset[str] = frozenset(CUTS)


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    text: str | None = None
    delta: _Delta | None = None
    finish_reason: str | None = None


class _Event(msgspec.Struct):
    id: str | None = None
    object: str | None = None
    created: int | None = None
    model: str | None = None
    choices: list[_Choice] = []


_decode_event = msgspec.json.Decoder(_Event).decode
_DONE = b"[DONE]"
UNREAD_LIMIT = 64 * 1024
"""Relayed events are read (decoded, counted, their text kept) only when something asks, or once this many
bytes of them wait: most streams end cleanly and are never asked about."""


class StreamLedger:
    """One streamed answer as the client sees it, across the workers that produced it."""

    __slots__ = ("_done", "_finish", "_keeping", "_rest", "_tokens", "_unread", "_unread_bytes", "carried",
                 "continuing", "created", "id", "kept", "kind", "max_kept", "model", "object", "parts", "role_sent")

    def __init__(self, kind: Kind, max_kept_bytes: int) -> None:
        self.kind = kind
        self.max_kept = max_kept_bytes
        self._rest = b""
        self._unread: list[bytes] = []
        self._unread_bytes = 0
        self.parts: list[str] = []
        self.kept = 0
        self._tokens = 0
        self.carried = 0
        """Tokens sent before the current worker's part began (the continuation's usage is shifted by it)."""
        self._keeping = True
        self.continuing = False
        self.role_sent = False
        """The client has the answer's opening event (a chat's role chunk): a continuation's is dropped."""
        self._finish: str | None = None
        self._done = False
        self.id: str | None = None
        self.object: str | None = None
        self.created: int | None = None
        self.model: str | None = None

    @property
    def text(self) -> str:
        self.settle()
        return "".join(self.parts)

    @property
    def keeping(self) -> bool:
        """False once the answer outgrew `max_kept_bytes`, or is not one plain choice: it cannot be continued."""
        self.settle()
        return self._keeping

    @property
    def tokens(self) -> int:
        """Tokens the client has been sent, all workers together."""
        self.settle()
        return self._tokens

    @property
    def finish(self) -> str | None:
        """The answer's finish reason, once a worker sent it."""
        self.settle()
        return self._finish

    @property
    def done(self) -> bool:
        """The client has the stream's [DONE]."""
        self.settle()
        return self._done

    def feed(self, chunk: bytes) -> bytes:
        """The whole events `chunk` completes, as the client must get them (b"" while an event is partial)."""
        data = self._rest + chunk if self._rest else chunk
        end = data.rfind(b"\n\n")
        if end < 0:
            self._rest = data
            return b""
        end += 2
        if end == len(data):
            self._rest = b""
        else:
            data, self._rest = data[:end], data[end:]
        if self.continuing:
            return self._rewrite(data)
        if self._keeping:
            self._unread.append(data)
            self._unread_bytes += len(data)
            if self._unread_bytes > UNREAD_LIMIT:
                self.settle()
        return data

    def settle(self) -> None:
        """Read the events relayed since the last call: the counts, the text and the answer's ids are
        current after it. Called by everything that reads them here and by `plan_migration`."""
        unread = self._unread
        if not unread:
            return
        self._unread = []
        self._unread_bytes = 0
        for data in unread:
            if not self._keeping:
                return
            for event in data.split(b"\n\n"):
                if event.startswith(b"data: "):
                    self._note(event[6:])

    def flush(self) -> bytes:
        """What followed the last whole event when the worker's stream ended cleanly: relayed as it came."""
        rest, self._rest = self._rest, b""
        return rest

    def continue_elsewhere(self, tokens: int) -> None:
        """The next worker's stream continues this one, the answer so far counting `tokens`: drop the dead
        one's partial event, shift the usage by them."""
        self.settle()
        self._rest = b""
        self._tokens = self.carried = tokens
        self.continuing = True
        self.role_sent = self.id is not None

    def closing(self, usage: dict[str, Any] | None) -> bytes:
        """The end of an answer whose worker died after its last token: the usage event (when asked for) and
        [DONE]."""
        self.settle()
        tail = b""
        if usage is not None:
            tail = _sse({"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                         "choices": [], "usage": usage})
        return tail + b"data: [DONE]\n\n"

    def usage(self, prompt_tokens: int) -> dict[str, Any]:
        self.settle()
        return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + self._tokens,
                "completion_tokens": self._tokens, "prompt_tokens_details": None}

    def _note(self, payload: bytes) -> None:
        if payload == _DONE:
            self._done = True
            return
        try:
            event = _decode_event(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self._keeping = False
            return
        if self.id is None:
            self.id, self.object, self.created, self.model = event.id, event.object, event.created, event.model
        for choice in event.choices:
            if choice.index != 0:
                self._keeping = False  # n > 1: several answers in one stream are not continued
                return
            piece = choice.text if self.kind is Kind.COMPLETION else (
                choice.delta.content if choice.delta is not None else None)
            if piece:
                self._tokens += 1
                if self._keeping:
                    self.parts.append(piece)
                    self.kept += len(piece)
            if choice.finish_reason is not None:
                self._finish = choice.finish_reason
        if self.kept > self.max_kept and self._keeping:
            self._keeping = False
            self.parts = []

    def _rewrite(self, data: bytes) -> bytes:
        out = []
        for event in data.split(b"\n\n"):
            if not event:
                continue
            if event.startswith(b"data: ") and event[6:] != _DONE:
                self._note(event[6:])
                event = self._rewritten(event[6:])
                if not event:
                    continue
            elif event == b"data: [DONE]":
                self._done = True
            out.append(event + b"\n\n")
        return b"".join(out)

    def _rewritten(self, payload: bytes) -> bytes:
        """The continuation's event as part of the first answer; b"" for its role chunk (sent already)."""
        try:
            obj = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            return b"data: " + payload
        if not isinstance(obj, dict):
            return b"data: " + payload
        if "id" in obj:
            obj["id"] = self.id
        if "created" in obj:
            obj["created"] = self.created
        choices = obj.get("choices")
        if self.role_sent and isinstance(choices, list) and choices and all(_role_only(c) for c in choices):
            if obj.get("usage") is None:
                return b""
            obj["choices"] = []
        self.role_sent = True
        usage = obj.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int) \
                and isinstance(usage.get("completion_tokens"), int):
            prompt = usage["prompt_tokens"] - self.carried
            completion = usage["completion_tokens"] + self.carried
            usage.update(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        return b"data: " + msgspec.json.encode(obj)


def _role_only(choice: object) -> bool:
    """A chat chunk that only opens the assistant's message (its role, no text, no end)."""
    if not isinstance(choice, dict):
        return False
    delta = choice.get("delta")
    return (isinstance(delta, dict) and "role" in delta and not delta.get("content")
            and not delta.get("tool_calls") and choice.get("finish_reason") is None)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + msgspec.json.encode(obj) + b"\n\n"


class Continuation(msgspec.Struct, frozen=True):
    body: bytes
    """The request for the rest, its limits reduced by `tokens`."""
    tokens: int
    """The tokens it counts as generated already."""
    counting: tuple[bytes, ...]
    """/tokenize bodies for the original prompt and the continuation's (and, for a chat answer that starts
    with whitespace, the continuation's with it stripped): their difference is the exact number of tokens
    the text carries (a chunk may hold several), for `plan_migration(..., tokens=, strip=)`."""
    strip: bool = False


class Finish(msgspec.Struct, frozen=True):
    """The worker died after the answer's last token: only the usage (when asked for) and [DONE] are missing."""

    usage_wanted: bool
    tokenize_body: bytes
    """For the worker's /tokenize, which counts the prompt's tokens as its usage would have."""


class Stay(msgspec.Struct, frozen=True):
    """Not continued: the stream ends with an SSE error event, as without migration."""

    reason: str


Plan = Continuation | Finish | Stay


def plan_migration(body: bytes, ledger: StreamLedger, cut: str, migrations: int, rules: MigrationRules,
                   tokens: int | None = None, strip: bool = False) -> Plan:
    """What to do about a stream cut (`cut`: one of CUTS) after `migrations` earlier migrations.

    `tokens`: what the text carries as a worker's tokenizer counts it (from the first plan's `counting`);
    without it, the chunks with text are counted, one token each. `strip`: a chat's partial message goes
    without its leading whitespace (see `_strippable`).
    """
    ledger.settle()
    if ledger.done:
        return Stay("the answer had ended")
    if migrations >= rules.max_migrations:
        return Stay(f"{migrations} migrations already (migration.max_migrations)")
    if cut not in rules.on:
        return Stay(f"a {cut} stream is not migrated (migration.on)")
    if not ledger.keeping:
        return Stay("the answer is longer than migration.max_kept_bytes, or not one plain choice")
    try:
        request = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return Stay("the request body is not JSON")
    if not isinstance(request, dict):
        return Stay("the request body is not a JSON object")
    if ledger.finish is not None:
        return Finish(_wants_usage(request), msgspec.json.encode(_tokenize_request(request, ledger.kind)))
    why = _unmigratable(request, ledger.kind)
    if why is not None:
        return Stay(why)
    return _continued(request, ledger, ledger.tokens if tokens is None else tokens, strip)


def _wants_usage(request: dict[str, Any]) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _tokenize_request(request: dict[str, Any], kind: Kind) -> dict[str, Any]:
    if kind is Kind.COMPLETION:
        return {"model": request.get("model"), "prompt": _prompt(request.get("prompt"))}
    out = {"model": request.get("model"), "messages": request.get("messages")}
    for key in ("add_generation_prompt", "continue_final_message", "chat_template", "chat_template_kwargs",
                "add_special_tokens"):
        if key in request:
            out[key] = request[key]
    return out


def _prompt(prompt: object) -> object:
    return prompt[0] if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str) else prompt


def _unmigratable(request: dict[str, Any], kind: Kind) -> str | None:
    """Why the answer cannot be continued from its text, or None."""
    if request.get("n") not in (None, 1) or request.get("best_of") not in (None, 1):
        return "several choices (n, best_of)"
    if request.get("echo"):
        return "echo"
    if request.get("tools") or request.get("functions"):
        return "tools"
    response_format = request.get("response_format")
    if (isinstance(response_format, dict) and response_format.get("type") not in (None, "text")) or any(
            k.startswith("guided_") or k == "structured_outputs" for k in request):
        return "structured output"
    if request.get("prompt_logprobs") is not None:
        return "prompt_logprobs"
    if kind is Kind.COMPLETION:
        if not isinstance(_prompt(request.get("prompt")), str):
            return "the prompt is not one text"
        if request.get("suffix"):
            return "suffix"
        return None
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        return "no messages"
    if request.get("continue_final_message") and not (
            isinstance(messages[-1], dict) and isinstance(messages[-1].get("content"), str)):
        return "the continued final message is not text"
    return None


def _continued(request: dict[str, Any], ledger: StreamLedger, done: int, strip: bool) -> Plan:
    original = msgspec.json.encode(_tokenize_request(request, ledger.kind))
    text = ledger.text
    if ledger.kind is Kind.COMPLETION:
        prompt = _prompt(request["prompt"])
        assert isinstance(prompt, str)
        request["prompt"] = prompt + text
        left = _int(request.get("max_tokens"), COMPLETIONS_DEFAULT_MAX_TOKENS) - done
        if left < 1:
            return Stay("no tokens left to generate")
        request["max_tokens"] = left
    else:
        messages = list(request["messages"])
        if request.get("continue_final_message"):
            last = dict(messages[-1])
            last["content"] = last["content"] + text
            messages[-1] = last
        else:
            messages.append({"role": "assistant", "content": text.lstrip() if strip else text})
        request["messages"] = messages
        request["continue_final_message"] = True
        request["add_generation_prompt"] = False
        for key in ("max_tokens", "max_completion_tokens"):
            limit = request.get(key)
            if isinstance(limit, int) and not isinstance(limit, bool):
                if limit - done < 1:
                    return Stay("no tokens left to generate")
                request[key] = limit - done
    min_tokens = request.get("min_tokens")
    if isinstance(min_tokens, int) and not isinstance(min_tokens, bool) and min_tokens:
        request["min_tokens"] = max(0, min_tokens - done)
    counting: tuple[bytes, ...] = (original, msgspec.json.encode(_tokenize_request(request, ledger.kind)))
    if _strippable(request, ledger) and not strip:
        stripped = list(request["messages"])
        stripped[-1] = {"role": "assistant", "content": text.lstrip()}
        counting += (msgspec.json.encode(_tokenize_request({**request, "messages": stripped}, ledger.kind)),)
    return Continuation(msgspec.json.encode(request), done, counting, strip)


def _strippable(request: dict[str, Any], ledger: StreamLedger) -> bool:
    """Whether the partial message could be rendered without its leading whitespace: a template that puts
    its own separator between the role and the content would otherwise double it (a token the model never
    read); which rendering matches is the tokenizer's to say (`Continuation.counting`)."""
    return ledger.kind is Kind.CHAT and ledger.text[:1].isspace()


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
