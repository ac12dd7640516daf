"""The HTTP bodies a live run sends: one per request of a `bench.workloads` stream, made before the replay.

Most scenarios send streamed `/v1/completions` whose prompt the worker counts as the request's
`prompt_tokens` (it counts words). The chat scenario (requests with a `session`) sends streamed
`/v1/chat/completions` whose `messages` are what a chat client sends:

- a system message, the adapter's system prompt: `system_tokens` words, the same for every session
  of that adapter;
- every earlier turn of the session, as a user message and the assistant's answer;
- the new user message.

Every text is deterministic: the system prompt per adapter, a user message per (session, turn), an
answer per (session, turn). So turn t+1's messages are turn t's plus turn t's answer and a new user
message, and each turn's prompt extends the previous turn's: what a prefix (KV) cache and a
prefix-aware router can reuse. The answers are synthetic text of the turn's `output_tokens` words,
not what the worker actually answered (the replay is open loop: a later turn may be sent before the
earlier one's answer has arrived), which changes nothing the cache sees: a worker caches prompts,
and the next turn's prompt carries the same answer text whichever worker it reaches.

Word counts: the messages' contents hold exactly `prompt_tokens` words (system + earlier user
messages and answers + the new message, the workload's own sum), which is what the worker counts
as the prompt; its rendering for the cache adds one role word per message.
"""

from __future__ import annotations

import msgspec
import numpy as np

from bench.workloads import Requests

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"

_VOCABULARY = np.array([a + b + c for a in "bdfgklmnprstvz" for b in "aeiou" for c in "bdgklmnprst"])
"""770 three-letter words: with its space a word is 4 characters, about a real tokenizer's token, so a
router that reads text (lora-router's 256-character blocks, vllm-router's character tree) sees as many
characters per prompt token as with real prompts, while the worker counts each word as one token."""
_SYSTEM, _USER, _ANSWER, _ALONE = 1, 2, 3, 4
"""Seeds of the kinds of text, so that no two of them are the same words."""


def completion(adapter: str, prompt_tokens: int, output_tokens: int) -> bytes:
    """A streamed completion whose prompt the worker counts as `prompt_tokens` (it counts words)."""
    return msgspec.json.encode({"model": adapter, "prompt": " ".join(["w"] * max(1, prompt_tokens)),
                                "max_tokens": int(output_tokens), "ignore_eos": True, "stream": True})


def text(kind: int, a: int, b: int, words: int) -> str:
    """`words` words, a function of (kind, a, b) alone."""
    rng = np.random.default_rng([kind, a, b])
    return " ".join(_VOCABULARY[rng.integers(0, len(_VOCABULARY), max(0, words))].tolist())


class ChatBuilder:
    """The messages of each turn of each session, in the order the turns are sent (time order, so a
    session's turns come in turn order); keeps every session's history so far."""

    def __init__(self) -> None:
        self._history: dict[int, tuple[list[dict[str, str]], int, int, int]] = {}
        """session -> (messages so far, turns so far, the last turn's prompt_tokens and output_tokens)."""
        self._system: dict[int, dict[str, str]] = {}

    def system(self, adapter: int, words: int) -> dict[str, str]:
        message = self._system.get(adapter)
        if message is None:
            message = self._system[adapter] = {"role": "system", "content": text(_SYSTEM, adapter, 0, words)}
        return message

    def messages(self, session: int, adapter: int, system_tokens: int, prompt_tokens: int,
                 output_tokens: int) -> list[dict[str, str]]:
        """The next turn of `session`: its history, then a user message that brings the contents'
        words to `prompt_tokens`."""
        known = self._history.get(session)
        if known is None:
            turn = 0
            before = [self.system(adapter, system_tokens)] if system_tokens > 0 else []
            said = max(0, system_tokens)
        else:
            history, turn, last_prompt, last_output = known
            answer = {"role": "assistant", "content": text(_ANSWER, session, turn - 1, last_output)}
            before = [*history, answer]
            said = last_prompt + last_output
        user = {"role": "user", "content": text(_USER, session, turn, max(1, prompt_tokens - said))}
        messages = [*before, user]
        self._history[session] = (messages, turn + 1, prompt_tokens, output_tokens)
        return messages


def chat(adapter: str, messages: list[dict[str, str]], output_tokens: int) -> bytes:
    return msgspec.json.encode({"model": adapter, "messages": messages, "max_tokens": int(output_tokens),
                                "ignore_eos": True, "stream": True})


def bodies(requests: Requests, names: list[str]) -> tuple[str, list[bytes]]:
    """(path, body per request): chat turns where the requests have sessions, completions otherwise."""
    adapters, prompts, outputs = (requests.adapter.tolist(), requests.prompt_tokens.tolist(),
                                  requests.output_tokens.tolist())
    if requests.session is None:
        return COMPLETIONS, [completion(names[a], p, o) for a, p, o in zip(adapters, prompts, outputs, strict=True)]
    sessions = requests.session.tolist()
    system = requests.system_tokens.tolist() if requests.system_tokens is not None else [0] * len(sessions)
    builder = ChatBuilder()
    out: list[bytes] = []
    for s, a, st, p, o in zip(sessions, adapters, system, prompts, outputs, strict=True):
        # a request outside any session (none in the chat workload) is a one-turn chat of its own
        messages = (builder.messages(s, a, st, p, o) if s >= 0 else
                    [{"role": "user", "content": text(_ALONE, len(out), 0, p)}])
        out.append(chat(names[a], messages, o))
    return CHAT, out


def content_words(messages: list[dict[str, str]]) -> int:
    """Words in the messages' contents: what the worker counts as the prompt's tokens."""
    return sum(len(m["content"].split()) for m in messages)
