"""Migration's rules as pure functions: what a stream carried, and the request that continues it."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from test_fleetstate import state_of

from router.core.continuation import (
    UNREAD_LIMIT,
    Continuation,
    Finish,
    Kind,
    MigrationRules,
    Stay,
    StreamLedger,
    plan_migration,
)
from router.core.events import LoadFinished
from router.core.names import Target
from router.core.retrybudget import RetryBudget
from router.core.routing import FIRST, Forward, decide

RULES = MigrationRules()


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def piece(text: str, finish: str | None = None, ident: str = "cmpl-1", created: int = 7) -> bytes:
    return sse({"id": ident, "object": "text_completion", "created": created, "model": "a",
                "choices": [{"index": 0, "text": text, "finish_reason": finish}]})


def chat_piece(delta: dict[str, Any], ident: str = "chatcmpl-1", created: int = 7) -> bytes:
    return sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": "a",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})


def fed(ledger: StreamLedger, *chunks: bytes) -> bytes:
    return b"".join(ledger.feed(c) for c in chunks)


def test_only_whole_events_reach_the_client_and_a_dead_workers_half_event_is_dropped() -> None:
    ledger = StreamLedger(Kind.COMPLETION, 1 << 20)
    one, two = piece(" alpha"), piece(" bravo")
    assert fed(ledger, one + two[:10]) == one
    assert ledger.text == " alpha" and ledger.tokens == 1
    ledger.continue_elsewhere(ledger.tokens)
    assert fed(ledger, piece(" bravo", ident="cmpl-2", created=9)) == piece(" bravo")
    assert ledger.text == " alpha bravo" and ledger.tokens == 2


def test_a_continuation_reads_as_the_first_answer_role_once_usage_whole() -> None:
    ledger = StreamLedger(Kind.CHAT, 1 << 20)
    fed(ledger, chat_piece({"role": "assistant", "content": ""}), chat_piece({"content": " a"}),
        chat_piece({"content": " b"}))
    ledger.continue_elsewhere(ledger.tokens)
    usage = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    out = fed(ledger, chat_piece({"role": "assistant", "content": ""}, "x", 99), chat_piece({"content": " c"}, "x", 99),
              sse({"id": "x", "object": "chat.completion.chunk", "created": 99, "model": "a", "choices": [],
                   "usage": usage}), b"data: [DONE]\n\n")
    events = [e for e in out.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]" and ledger.done
    parsed = [json.loads(e[6:]) for e in events[:-1]]
    assert [p["choices"] for p in parsed[:1]] == [[{"index": 0, "delta": {"content": " c"}, "finish_reason": None}]]
    assert {(p["id"], p["created"]) for p in parsed} == {("chatcmpl-1", 7)}
    assert parsed[-1]["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def _completion(tokens: int = 2, **body: Any) -> tuple[bytes, StreamLedger]:
    ledger = StreamLedger(Kind.COMPLETION, 1 << 20)
    for i in range(tokens):
        fed(ledger, piece(f" w{i}"))
    return json.dumps({"model": "a", "prompt": "p", "stream": True, **body}).encode(), ledger


def test_completions_continue_from_prompt_plus_text_with_fewer_tokens_and_the_same_seed() -> None:
    body, ledger = _completion(2, max_tokens=10, seed=5, temperature=0)
    plan = plan_migration(body, ledger, "closed", 0, RULES)
    assert isinstance(plan, Continuation)
    assert json.loads(plan.body) == {"model": "a", "prompt": "p w0 w1", "stream": True, "max_tokens": 8, "seed": 5,
                                     "temperature": 0}
    default = plan_migration(*_completion(3), "closed", 0, RULES)
    assert isinstance(default, Continuation) and json.loads(default.body)["max_tokens"] == 13


def test_chat_continues_the_partial_assistant_message() -> None:
    ledger = StreamLedger(Kind.CHAT, 1 << 20)
    fed(ledger, chat_piece({"role": "assistant", "content": ""}), chat_piece({"content": " hi"}))
    body = json.dumps({"model": "a", "messages": [{"role": "user", "content": "q"}], "max_completion_tokens": 5,
                       "max_tokens": 6}).encode()
    plan = plan_migration(body, ledger, "closed", 0, RULES)
    assert isinstance(plan, Continuation)
    assert json.loads(plan.body) == {
        "model": "a", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " hi"}],
        "max_completion_tokens": 4, "max_tokens": 5, "continue_final_message": True, "add_generation_prompt": False}
    prefilled = json.dumps({"model": "a", "continue_final_message": True, "add_generation_prompt": False,
                            "messages": [{"role": "user", "content": "q"},
                                         {"role": "assistant", "content": "Sure,"}]}).encode()
    plan = plan_migration(prefilled, ledger, "closed", 0, RULES)
    assert isinstance(plan, Continuation)
    assert json.loads(plan.body)["messages"][-1] == {"role": "assistant", "content": "Sure, hi"}


@pytest.mark.parametrize("extra", [{"n": 2}, {"echo": True}, {"response_format": {"type": "json_object"}},
                                   {"guided_json": {}}, {"prompt": ["a", "b"]}, {"suffix": "x"}])
def test_what_cannot_be_continued_from_its_text_is_not_migrated(extra: dict[str, Any]) -> None:
    body, ledger = _completion(2, **extra)
    assert isinstance(plan_migration(body, ledger, "closed", 0, RULES), Stay)


def test_the_limits_apply() -> None:
    body, ledger = _completion(2, max_tokens=10)
    assert isinstance(plan_migration(body, ledger, "closed", 3, RULES), Stay)
    assert isinstance(plan_migration(body, ledger, "timeout", 0, MigrationRules(on=frozenset({"closed"}))), Stay)
    long = StreamLedger(Kind.COMPLETION, 8)
    fed(long, piece(" alpha"), piece(" bravo"))
    assert not long.keeping and long.text == ""
    assert isinstance(plan_migration(body, long, "closed", 0, RULES), Stay)
    finished, ledger = _completion(2, max_tokens=2)
    fed(ledger, piece(" w2", finish="length"))
    assert isinstance(plan_migration(finished, ledger, "closed", 0, RULES), Finish)
    fed(ledger, b"data: [DONE]\n\n")
    assert isinstance(plan_migration(finished, ledger, "closed", 0, RULES), Stay)


def test_a_finished_answer_gets_its_usage_and_done_from_the_router() -> None:
    body, ledger = _completion(2, max_tokens=2, stream_options={"include_usage": True})
    plan = plan_migration(body, ledger, "closed", 0, RULES)
    assert isinstance(plan, Stay)  # no finish_reason yet: not finished
    fed(ledger, piece("", finish="length"))
    plan = plan_migration(body, ledger, "closed", 0, RULES)
    assert isinstance(plan, Finish) and plan.usage_wanted
    assert json.loads(plan.tokenize_body) == {"model": "a", "prompt": "p"}
    tail = ledger.closing(ledger.usage(4))
    usage_event, done = [e for e in tail.split(b"\n\n") if e]
    assert json.loads(usage_event[6:])["usage"]["completion_tokens"] == 2 and done == b"data: [DONE]"


def test_the_continuation_goes_to_another_holder_as_a_fresh_exchange() -> None:
    state = state_of(3)
    state.apply(LoadFinished("w1", "a"))
    state.apply(LoadFinished("w2", "a"))
    tried = FIRST.forward_failed("w0", "connect").stream_cut("w1")
    budget = RetryBudget(0.0)  # no retries left: a migration is not a retry
    decision = decide(Target(base="base", adapter="a", model="a"), state, tried, budget, random.Random(0))
    assert decision == Forward("w2", decision.via, last_chance=False, retry=False)  # type: ignore[union-attr]
    assert tried.migrations == 1 and tried.forwards == 0


def test_a_tokenizer_count_replaces_the_chunk_count() -> None:
    """Under load vLLM may put two tokens in one chunk: the worker's /tokenize of the prompt before and after
    says how many the kept text holds, and the limits follow that count."""
    body, ledger = _completion(2, max_tokens=10)
    plan = plan_migration(body, ledger, "closed", 0, RULES)
    assert isinstance(plan, Continuation) and plan.tokens == 2
    assert [json.loads(b) for b in plan.counting] == [{"model": "a", "prompt": "p"},
                                                      {"model": "a", "prompt": "p w0 w1"}]
    exact = plan_migration(body, ledger, "closed", 0, RULES, tokens=3)
    assert isinstance(exact, Continuation) and exact.tokens == 3 and json.loads(exact.body)["max_tokens"] == 7
    ledger.continue_elsewhere(exact.tokens)
    usage = {"prompt_tokens": 4, "completion_tokens": 7, "total_tokens": 11}
    out = fed(ledger, sse({"id": "x", "object": "text_completion", "created": 1, "model": "a", "choices": [],
                           "usage": usage}))
    assert json.loads(out[6:])["usage"] == {"prompt_tokens": 1, "completion_tokens": 10, "total_tokens": 11}


def test_a_chat_answer_starting_with_whitespace_is_also_counted_stripped() -> None:
    """A template with its own separator before the content would read the kept leading space as one more
    token: the plan asks /tokenize of both renderings, and `strip` keeps the second."""
    ledger = StreamLedger(Kind.CHAT, 1 << 20)
    fed(ledger, chat_piece({"role": "assistant", "content": ""}), chat_piece({"content": " hi"}))
    body = json.dumps({"model": "a", "messages": [{"role": "user", "content": "q"}]}).encode()
    plan = plan_migration(body, ledger, "closed", 0, RULES)
    assert isinstance(plan, Continuation) and len(plan.counting) == 3
    assert json.loads(plan.counting[2])["messages"][-1] == {"role": "assistant", "content": "hi"}
    stripped = plan_migration(body, ledger, "closed", 0, RULES, tokens=1, strip=True)
    assert isinstance(stripped, Continuation) and stripped.strip
    assert json.loads(stripped.body)["messages"][-1] == {"role": "assistant", "content": "hi"}


def test_a_stream_cut_before_its_first_whole_event_gets_its_role_chunk_from_the_continuation() -> None:
    """The client must get exactly one role chunk: when the dead worker's first event never arrived whole,
    the continuation's is the one."""
    ledger = StreamLedger(Kind.CHAT, 1 << 20)
    assert fed(ledger, chat_piece({"role": "assistant", "content": ""})[:20]) == b""
    ledger.continue_elsewhere(0)
    out = fed(ledger, chat_piece({"role": "assistant", "content": ""}, "x", 9),
              chat_piece({"content": " a"}, "x", 9))
    deltas = [json.loads(e[6:])["choices"][0]["delta"] for e in out.split(b"\n\n") if e]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": " a"}]
    ledger.continue_elsewhere(1)
    again = fed(ledger, chat_piece({"role": "assistant", "content": ""}, "y", 11),
                chat_piece({"content": " b"}, "y", 11))
    assert [json.loads(e[6:])["choices"][0]["delta"] for e in again.split(b"\n\n") if e] == [{"content": " b"}]


def test_events_are_read_when_asked_and_never_pile_up_past_the_unread_limit() -> None:
    """The ledger reads relayed events lazily (most streams are never asked about); what it reports is
    current whenever it is read, and what waits unread stays bounded."""
    ledger = StreamLedger(Kind.COMPLETION, 1 << 20)
    fed(ledger, piece(" alpha"), piece(" bravo"))
    assert ledger.tokens == 2 and ledger.finish is None
    event = piece(" x" * 100)
    count = 3 * UNREAD_LIMIT // len(event)
    for _ in range(count):
        ledger.feed(event)
        assert ledger._unread_bytes <= UNREAD_LIMIT
    fed(ledger, piece("", finish="length"), b"data: [DONE]\n\n")
    assert (ledger.tokens, ledger.finish, ledger.done) == (2 + count, "length", True)
    assert ledger.text == " alpha bravo" + " x" * 100 * count
