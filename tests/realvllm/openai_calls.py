"""The few OpenAI-style HTTP calls the real-vLLM tests make, to a worker or to the router alike."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

GREEDY_TOKENS = 12


@dataclass(frozen=True)
class Reply:
    status: int
    text: str
    headers: Mapping[str, str]

    def json(self) -> Any:
        return json.loads(self.text)


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def call(method: str, url: str, body: Mapping[str, Any] | None = None,
               headers: Mapping[str, str] | None = None) -> Reply:
    async with aiohttp.ClientSession() as session, \
            session.request(method, url, json=body, headers=dict(headers or {})) as resp:
        return Reply(resp.status, await resp.text(), dict(resp.headers))


async def greedy(url: str, model: str, prompt: str, headers: Mapping[str, str] | None = None,
                 tokens: int = GREEDY_TOKENS) -> Reply:
    """A completion at temperature 0 with a fixed token count (ignore_eos), so it is repeatable."""
    return await call("POST", f"{url}/v1/completions", {
        "model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
        "ignore_eos": True}, headers)


async def greedy_text(url: str, model: str, prompt: str,
                      headers: Mapping[str, str] | None = None) -> str:
    reply = await greedy(url, model, prompt, headers)
    assert reply.status == 200, reply.text
    body = reply.json()
    assert body["model"] == model
    return str(body["choices"][0]["text"])


async def listed(url: str, headers: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """GET /v1/models as {id: card}."""
    reply = await call("GET", f"{url}/v1/models", headers=headers)
    assert reply.status == 200, reply.text
    return {card["id"]: card for card in reply.json()["data"]}


def sse_events(text: str) -> list[str]:
    """The data payloads of a server-sent-event stream, `[DONE]` included."""
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def chat_deltas(text: str) -> list[str]:
    """Content deltas of a streamed chat completion (empty ones included), after checking [DONE]."""
    events = sse_events(text)
    assert events and events[-1] == "[DONE]", events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    return [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
