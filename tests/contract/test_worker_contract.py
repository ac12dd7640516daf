"""vLLM's worker contract, as a router sees it (../shared/reference/vllm-lora-api.md).

The same tests run against the simulated worker and, when its env exists,
against real vLLM: every difference is a bug in the simulator.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from pathlib import Path

import pytest

MODEL_FIELDS = ["id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"]


def _name() -> str:
    return f"lora-{uuid.uuid4().hex[:8]}"


def _load(worker, name: str, path, **extra: object):
    return worker.call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path), **extra})


def _error(body: bytes) -> dict:
    return json.loads(body)["error"]


def test_health_is_an_empty_200(worker) -> None:
    status, _, body = worker.call("GET", "/health", key=False)
    assert (status, body) == (200, b"")


def test_models_lists_the_base_with_no_parent(worker) -> None:
    status, headers, body = worker.call("GET", "/v1/models")
    assert status == 200 and headers["content-type"] == "application/json"
    listing = json.loads(body)
    assert listing["object"] == "list"
    base = listing["data"][0]
    assert list(base) == MODEL_FIELDS
    assert base["id"] == worker.backend.model and base["parent"] is None and base["owned_by"] == "vllm"


def test_load_answers_plain_text_and_lists_the_adapter(worker) -> None:
    name = _name()
    path = worker.adapter(name)
    status, headers, body = _load(worker, name, path)
    assert status == 200
    assert body == f"Success: LoRA adapter '{name}' added successfully.".encode()
    assert "content-type" not in headers
    card = next(m for m in json.loads(worker.call("GET", "/v1/models")[2])["data"] if m["id"] == name)
    assert list(card) == MODEL_FIELDS
    assert card["root"] == str(path) and card["parent"] == worker.backend.model
    assert card["max_model_len"] is None


def test_loading_twice_is_400_invalid_user_input_unless_in_place(worker) -> None:
    name = _name()
    path = worker.adapter(name)
    assert _load(worker, name, path)[0] == 200
    status, _, body = _load(worker, name, path)
    assert status == 400
    assert json.loads(body) == {"error": {
        "message": f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in "
                   "place, set 'load_inplace' to True.",
        "type": "InvalidUserInput", "param": None, "code": 400}}
    other = worker.adapter(_name())
    status, _, body = _load(worker, name, other, load_inplace=True)
    assert status == 200, body
    card = next(m for m in json.loads(worker.call("GET", "/v1/models")[2])["data"] if m["id"] == name)
    assert card["root"] == str(other)


def test_a_path_without_an_adapter_is_404(worker, tmp_path) -> None:
    name = _name()
    status, _, body = _load(worker, name, tmp_path / "nothing-here")
    assert status == 404
    err = _error(body)
    assert err["message"] == f"Loading lora {name} failed: No adapter found for <path>", "vLLM hides the path"
    assert err["code"] == 404


def test_missing_lora_path_is_400_bad_request(worker) -> None:
    status, _, body = worker.call("POST", "/v1/load_lora_adapter", {"lora_name": _name()})
    assert status == 400
    err = _error(body)
    assert (err["type"], err["param"], err["code"]) == ("Bad Request", "body.lora_path", 400)


def test_a_rank_above_max_lora_rank_is_500_and_the_worker_survives(worker) -> None:
    name = _name()
    status, _, body = _load(worker, name, worker.adapter(name, rank=16))
    assert status == 500
    assert "LoRA rank 16 is greater than max_lora_rank 8" in _error(body)["message"]
    assert worker.call("GET", "/health", key=False)[0] == 200
    assert name not in worker.held()


def test_an_adapter_named_like_the_base_model_is_400(worker) -> None:
    status, _, body = _load(worker, worker.backend.model, worker.adapter(_name()))
    assert status == 400
    assert "conflicts with a served base model" in _error(body)["message"]


def test_unload_answers_plain_text_then_404(worker) -> None:
    name = _name()
    assert _load(worker, name, worker.adapter(name))[0] == 200
    status, headers, body = worker.call("POST", "/v1/unload_lora_adapter", {"lora_name": name})
    assert status == 200 and "content-type" not in headers
    assert body == f"Success: LoRA adapter '{name}' removed successfully.".encode()
    assert name not in worker.held()
    status, _, body = worker.call("POST", "/v1/unload_lora_adapter", {"lora_name": name})
    assert status == 404
    assert _error(body)["message"] == f"The lora adapter '{name}' cannot be found."


def test_an_unknown_model_is_vllms_404(worker) -> None:
    body = {"model": "nope", "prompt": "hello", "max_tokens": 2}
    status, _, raw = worker.call("POST", "/v1/completions", body)
    assert status == 404
    assert json.loads(raw) == {"error": {
        "message": f"The model `nope` does not exist. Valid aliases: {worker.backend.model}.",
        "type": "NotFoundError", "param": "model", "code": 404}}


@pytest.fixture(scope="module")
def two_adapters(worker) -> list[str]:
    names = [_name(), _name()]
    for n in names:
        assert _load(worker, n, worker.adapter(n))[0] == 200
    return names


def test_completions_echo_the_adapter_and_honour_max_tokens(worker, two_adapters) -> None:
    texts = []
    for name in two_adapters:
        body = {"model": name, "prompt": "hello world", "max_tokens": 5, "temperature": 0, "ignore_eos": True}
        status, headers, raw = worker.call("POST", "/v1/completions", body)
        assert status == 200 and headers["content-type"] == "application/json"
        out = json.loads(raw)
        assert out["object"] == "text_completion" and out["model"] == name
        assert out["choices"][0]["finish_reason"] == "length"
        assert out["usage"]["completion_tokens"] == 5
        texts.append(out["choices"][0]["text"])
    assert texts[0] != texts[1], "two adapters answered the same text"


def test_chat_completion_shape(worker, two_adapters) -> None:
    body = {"model": two_adapters[0], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "temperature": 0, "ignore_eos": True}
    status, _, raw = worker.call("POST", "/v1/chat/completions", body)
    assert status == 200
    out = json.loads(raw)
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    message = out["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    assert out["usage"]["completion_tokens"] == 3


def _events(raw: bytes) -> list[str]:
    assert raw.endswith(b"\n\n")
    events = [e for e in raw.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: "):] for e in events]


def test_chat_stream_role_tokens_finish_usage_done(worker, two_adapters) -> None:
    body = {"model": two_adapters[1], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    status, headers, raw = worker.call("POST", "/v1/chat/completions", body)
    assert status == 200
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    events = _events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == two_adapters[1] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    token_chunks = [c for c in chunks[1:] if c["choices"]]
    # vLLM sends what each engine step produced: under load one chunk may carry two tokens; usage counts them.
    assert 1 <= len(token_chunks) <= 4
    assert token_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in token_chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_completion_stream_without_usage(worker, two_adapters) -> None:
    body = {"model": two_adapters[0], "prompt": "hello", "max_tokens": 3, "temperature": 0, "ignore_eos": True,
            "stream": True}
    status, _, raw = worker.call("POST", "/v1/completions", body)
    assert status == 200
    events = _events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    # One chunk per engine step: under load vLLM may put two tokens in one.
    assert 1 <= len(chunks) <= 3 and all("text" in c["choices"][0] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def _stream_pieces(worker, route: str, body: dict) -> list[str]:
    """The text of each streamed token: where a stream cut by a dying worker could have stopped. The tiny
    model's tokens and the simulated worker's are whole words, each with its leading space, so a chunk
    holding two (a busy vLLM sends together the outputs its API server had not sent yet) is cut in two."""
    status, _, raw = worker.call("POST", route, {**body, "stream": True})
    assert status == 200
    pieces = []
    for event in _events(raw)[:-1]:
        for choice in json.loads(event)["choices"]:
            piece = choice["text"] if route == "/v1/completions" else choice["delta"].get("content")
            if piece:
                pieces += re.findall(r"\s*\S+", piece)
    return pieces


def test_a_greedy_completion_continues_token_for_token_from_its_text(worker, two_adapters) -> None:
    """What request migration relies on: the prompt plus the first k tokens' text, asked with k fewer
    tokens, gives the rest of the answer."""
    body = {"model": two_adapters[0], "prompt": "hello world", "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    pieces = _stream_pieces(worker, "/v1/completions", body)
    assert len(pieces) == 6
    for k in (1, 4):
        rest = _stream_pieces(worker, "/v1/completions",
                              {**body, "prompt": body["prompt"] + "".join(pieces[:k]), "max_tokens": 6 - k})
        assert "".join(rest) == "".join(pieces[k:])


def _count(worker, body: dict) -> int:
    status, _, raw = worker.call("POST", "/tokenize", body)
    assert status == 200, raw
    return int(json.loads(raw)["count"])


def test_a_greedy_chat_answer_continues_its_final_message(worker, two_adapters) -> None:
    """vLLM's continue_final_message with add_generation_prompt off continues a partial assistant message
    as the uninterrupted answer would have gone on (both set is a 400). A template that writes its own
    separator before the content (the tiny model's does) reads the answer's leading space as one token
    more; /tokenize tells, and the router keeps the rendering whose count is the smaller (the rule in
    router.proxy._counted)."""
    messages = [{"role": "user", "content": "tell me a story"}]
    body = {"model": two_adapters[1], "messages": messages, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    pieces = _stream_pieces(worker, "/v1/chat/completions", body)
    assert len(pieces) == 6
    prompt = _count(worker, {"model": body["model"], "messages": messages})
    for k in (1, 4):
        text = "".join(pieces[:k])
        counted = {content: _count(worker, {"model": body["model"], "continue_final_message": True,
                                            "add_generation_prompt": False,
                                            "messages": [*messages, {"role": "assistant", "content": content}]})
                   for content in {text, text.lstrip()}}
        content = min(counted, key=lambda c: (counted[c], c != text))
        assert counted[content] - prompt == k
        partial = [*messages, {"role": "assistant", "content": content}]
        rest = _stream_pieces(worker, "/v1/chat/completions", {
            **body, "messages": partial, "max_tokens": 6 - k, "continue_final_message": True,
            "add_generation_prompt": False})
        assert "".join(rest) == "".join(pieces[k:])
    status, _, raw = worker.call("POST", "/v1/chat/completions", {
        **body, "continue_final_message": True, "add_generation_prompt": True})
    assert status == 400 and _error(raw)["code"] == 400


@pytest.mark.parametrize(("route", "field"), [("/v1/completions", "max_tokens"),
                                               ("/v1/chat/completions", "max_tokens"),
                                               ("/v1/chat/completions", "max_completion_tokens")])
def test_a_max_tokens_below_one_is_400_bad_request(worker, route, field) -> None:
    body = {"model": worker.backend.model, field: -5,
            **({"prompt": "hello"} if route == "/v1/completions"
               else {"messages": [{"role": "user", "content": "hi"}]})}
    status, headers, raw = worker.call("POST", route, body)
    assert status == 400 and headers["content-type"] == "application/json"
    error = _error(raw)
    assert (error["type"], error["param"], error["code"]) == ("BadRequestError", "max_tokens", 400)
    assert error["message"].startswith("max_tokens must be at least 1, got -5.")


def test_a_body_over_one_mib_is_read_and_refused_by_the_context_check(worker) -> None:
    """vLLM (uvicorn) has no body-size limit: a 1.5 MiB prompt gets its JSON context-length error, not a 413."""
    body = {"model": worker.backend.model, "prompt": "hello " * 260_000, "max_tokens": 2}
    status, headers, raw = worker.call("POST", "/v1/completions", body)
    assert len(json.dumps(body)) > 1024 * 1024
    assert status == 400 and headers["content-type"] == "application/json"
    error = _error(raw)
    assert error["type"] == "BadRequestError" and error["code"] == 400
    assert error["message"].startswith("This model's maximum context length is ")


def test_metrics_carry_the_lora_series(worker) -> None:
    body = {"model": worker.backend.model, "prompt": "hello", "max_tokens": 1}
    assert worker.call("POST", "/v1/completions", body)[0] == 200, "the series appears after a first request"
    status, _, raw = worker.call("GET", "/metrics", key=False)
    assert status == 200
    text = raw.decode()
    info = [line for line in text.splitlines() if line.startswith("vllm:lora_requests_info{")]
    assert info and all('max_lora="2"' in line and "running_lora_adapters=" in line
                        and "waiting_lora_adapters=" in line for line in info)
    assert float(info[-1].rsplit(" ", 1)[1]) > 1e9, "the value is a unix timestamp"
    start = next(line for line in text.splitlines() if line.startswith("process_start_time_seconds "))
    assert float(start.split()[1]) > 1e9, "registrars tell restarts apart by the process start time"
    for series in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        line = next(line for line in text.splitlines() if line.startswith(series + "{"))
        assert f'model_name="{worker.backend.model}"' in line


def test_api_key_guards_v1_only(start_worker) -> None:
    """The key comes from VLLM_API_KEY (both backends), so it never shows in the process table."""
    w = start_worker(api_key="sekrit-key")
    assert b"sekrit-key" not in Path(f"/proc/{w.proc.pid}/cmdline").read_bytes()
    assert w.call("GET", "/health", key=False)[0] == 200
    assert w.call("GET", "/metrics", key=False)[0] == 200
    status, _, body = w.call("GET", "/v1/models", key=False)
    assert status == 401 and json.loads(body) == {"error": "Unauthorized"}
    assert w.call("GET", "/v1/models", key="wrong")[0] == 401
    assert w.call("GET", "/v1/models")[0] == 200
    name = _name()
    assert w.call("POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(w.adapter(name))},
                  key=False)[0] == 401


def test_without_runtime_updating_the_lora_routes_do_not_exist(start_worker) -> None:
    w = start_worker(runtime_updates=False)
    name = _name()
    assert _load(w, name, w.adapter(name))[0] == 404
    assert w.call("POST", "/v1/unload_lora_adapter", {"lora_name": name})[0] == 404


def test_a_restart_forgets_runtime_adapters_but_keeps_startup_ones(backend, start_worker, tmp_path) -> None:
    fixed = backend.adapter(tmp_path / "fixed", "startup-lora")
    w = start_worker(lora_modules={"startup-lora": fixed})
    fresh = w.call("GET", "/metrics", key=False)[2].decode()
    assert "vllm:lora_requests_info{" not in fresh, "no LoRA series before the engine ran a request"
    name = _name()
    assert _load(w, name, w.adapter(name))[0] == 200
    assert {name, "startup-lora"} <= w.held()
    w.proc.kill()
    w.proc.start(timeout_s=300 if backend.slow else 30)
    assert w.held() == {"startup-lora"}


PREFIX_SERIES = {"vllm:prefix_cache_queries_total": "Prefix cache queries, in terms of number of queried tokens.",
                 "vllm:prefix_cache_hits_total": "Prefix cache hits, in terms of number of cached tokens."}
"""vLLM V1's prefix-cache counters (vllm/v1/metrics/loggers.py), as prometheus_client writes them."""
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "su", "do", "fa")
"""Two of them make a word both backends read as one token (the tiny model's vocabulary has them all)."""


def _prefix_counters(worker) -> tuple[float, float]:
    text = worker.call("GET", "/metrics", key=False)[2].decode()
    values = []
    for series in PREFIX_SERIES:
        line = next(line for line in text.splitlines() if line.startswith(series + "{"))
        values.append(float(line.rsplit(" ", 1)[1]))
    return values[0], values[1]


def _chat_counted(worker, model: str, messages: list[dict]) -> tuple[float, float]:
    """(queried, hit) prompt tokens one chat request added to the worker's counters."""
    before = _prefix_counters(worker)
    body = {"model": model, "messages": messages, "max_tokens": 1, "temperature": 0}
    assert worker.call("POST", "/v1/chat/completions", body)[0] == 200
    after = _prefix_counters(worker)
    return after[0] - before[0], after[1] - before[1]


def test_metrics_carry_the_prefix_cache_counters(worker, two_adapters) -> None:
    """A repeated prompt is found in the prefix cache, the same text under another adapter is not: vLLM
    keys a LoRA request's blocks by its adapter."""
    text = worker.call("GET", "/metrics", key=False)[2].decode()
    for series, help_ in PREFIX_SERIES.items():
        assert f"# HELP {series} {help_}\n# TYPE {series} counter\n" in text
        line = next(line for line in text.splitlines() if line.startswith(series + "{"))
        assert f'model_name="{worker.backend.model}"' in line and 'engine="0"' in line
    rng = random.Random(uuid.uuid4().int)
    # 150 words: more than one full block of any size vLLM uses (16; 128 on CPU), under the context (256)
    words = [rng.choice(SYLLABLES) + rng.choice(SYLLABLES) for _ in range(150)]
    messages = [{"role": "system", "content": " ".join(words[:100])},
                {"role": "user", "content": " ".join(words[100:])}]
    queried, hit = _chat_counted(worker, two_adapters[0], messages)
    assert queried >= 150 and hit == 0, "text never seen before"
    queried, hit = _chat_counted(worker, two_adapters[0], messages)
    assert queried >= 150 and queried / 2 <= hit < queried, "found again, all but the last partial block"
    assert _chat_counted(worker, two_adapters[1], messages)[1] == 0, "another adapter's blocks are its own"
