"""Prefix-cache-aware picking: the prompt's blocks, the per-worker index, and the policy's use of them."""

from __future__ import annotations

import random

import msgspec
from hypothesis import given
from hypothesis import strategies as st
from test_fleetstate import records, state_of

from router.core.events import LoadFinished, MembershipChanged, RequestBegun, RequestEnded, RulesChanged
from router.core.fleetstate import FleetState
from router.core.health import HealthRules
from router.core.names import Target
from router.core.prefix import BLOCK_CHARS, MAX_BLOCKS, PrefixIndex, PrefixRules, prompt_blocks
from router.core.retrybudget import RetryBudget
from router.core.routing import FIRST, Forward, Via, decide

A = Target(base="base", adapter="a", model="a")
SYSTEM = "You are a careful assistant for the billing team. " * 80


def conversation(turns: int) -> list[list[str]]:
    """Each turn's prompt parts: the system prompt, then every message so far."""
    said: list[str] = ["system", SYSTEM]
    prompts = []
    for t in range(turns):
        said += ["user", f"question {t}: " + "why is my invoice late? " * 12]
        prompts.append(list(said))
        said += ["assistant", f"answer {t}: " + "it is on its way. " * 15]
    return prompts


def test_a_conversation_s_next_turn_starts_with_its_previous_turn_s_blocks() -> None:
    first, second = (prompt_blocks("a", p) for p in conversation(2))
    assert len(first) >= len(SYSTEM) // BLOCK_CHARS
    assert second[:len(first)] == first
    assert len(second) > len(first)


def test_blocks_are_per_adapter_and_only_full_blocks_count() -> None:
    parts = conversation(1)[0]
    assert set(prompt_blocks("a", parts)).isdisjoint(prompt_blocks("b", parts))
    assert prompt_blocks("a", ["x" * (BLOCK_CHARS - 1)]) == ()
    assert len(prompt_blocks("a", ["x" * (BLOCK_CHARS * 3 + 5)])) == 3
    assert len(prompt_blocks("a", ["x" * (BLOCK_CHARS * (MAX_BLOCKS + 10))])) == MAX_BLOCKS


def test_message_boundaries_and_non_ascii_text_change_the_blocks() -> None:
    text = "y" * (2 * BLOCK_CHARS)
    assert prompt_blocks("a", [text[:10], text[10:]]) != prompt_blocks("a", [text])
    accented = "é" * BLOCK_CHARS  # two bytes each: two blocks of bytes
    assert len(prompt_blocks("a", [accented])) == 2
    assert prompt_blocks("a", [accented + "tail"])[:2] == prompt_blocks("a", [accented])
    assert len(prompt_blocks("a", ["\ud800" * BLOCK_CHARS])) == 3  # a lone surrogate from JSON: no error


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 12)), min_size=1, max_size=60),
       st.integers(1, 40), st.tuples(st.integers(0, 6), st.integers(1, 12)))
def test_matched_is_the_longest_remembered_prefix_under_eviction(recorded: list[tuple[int, int]], capacity: int,
                                                               asked: tuple[int, int]) -> None:
    """Prompts as (chain, length): block k of chain c exists only after blocks 0..k-1 of c, as hashes do."""
    index = PrefixIndex(capacity)
    for chain, length in recorded:
        index.record([chain * 100 + k for k in range(length)])
        assert len(index.blocks) <= capacity
    chain, length = asked
    prompt = [chain * 100 + k for k in range(length)]
    linear = next((k for k, block in enumerate(prompt) if block not in index.blocks), len(prompt))
    assert index.matched(prompt) == linear
    assert all(block in index.blocks for block in prompt[:linear])


def holders(n: int, *, max_seqs: int = 64) -> FleetState:
    state = state_of(n)
    recs = {w: msgspec.structs.replace(r, max_num_seqs=max_seqs, max_loras=8) for w, r in records(n).items()}
    state.apply(MembershipChanged(recs))
    for w in recs:
        state.apply(LoadFinished(w, "a"))
    return state


def route(state: FleetState, prompt: tuple[int, ...], seed: int = 0) -> str:
    decision = decide(A, state, FIRST, RetryBudget(0.2), random.Random(seed), prompt)
    assert isinstance(decision, Forward)
    matched = state.workers[decision.worker].prefix.matched(prompt)
    assert decision.via is (Via.CACHED if matched else Via.ROOM)
    state.apply(RequestBegun(decision.worker, "a", prompt))
    return decision.worker


def test_a_conversation_stays_on_its_worker_while_load_elsewhere_is_close() -> None:
    state = holders(4)
    turns = [prompt_blocks("a", p) for p in conversation(8)]
    first = route(state, turns[0])  # its request stays in flight: one more there than anywhere else
    worth = len(turns[0]) * state.prefix_rules.block_tokens / state.prefix_rules.tokens_per_request
    for _ in range(int(worth) - 2):  # in flight there: nearly as many as its first turn's blocks are worth
        state.apply(RequestBegun(first, "a"))
    for seed, prompt in enumerate(turns[1:], start=1):
        assert route(state, prompt, seed) == first
        state.apply(RequestEnded(first, "a"))  # the turn's answer came; the user thinks, then asks again


def test_a_busy_worker_loses_the_conversation_when_the_saved_prefill_is_worth_less() -> None:
    state = holders(2)
    turns = [prompt_blocks("a", p) for p in conversation(2)]
    first = route(state, turns[0])
    other = next(w for w in state.workers if w != first)
    rules = state.prefix_rules
    worth = len(turns[0]) * rules.block_tokens / rules.tokens_per_request
    for _ in range(int(worth) + 1):
        state.apply(RequestBegun(first, "a"))
    assert route(state, turns[1]) == other


def test_a_conversation_moves_when_its_worker_has_no_room_and_comes_back_never_to_a_full_one() -> None:
    state = holders(2, max_seqs=2)
    turns = [prompt_blocks("a", p) for p in conversation(3)]
    first = route(state, turns[0])
    state.apply(RequestBegun(first, "a"))  # its batch is now full
    moved = route(state, turns[1])
    assert moved != first
    state.apply(RequestEnded(first, "a"))
    state.apply(RequestEnded(first, "a"))
    assert route(state, turns[2]) in (first, moved)  # both hold the history now; either is right


def test_without_a_prompt_or_with_the_index_off_picking_is_power_of_two_as_before() -> None:
    turns = [prompt_blocks("a", p) for p in conversation(6)]
    for state in (holders(4), holders(4)):
        state.apply(RulesChanged(HealthRules(), PrefixRules(index_blocks=0)))
        picked = {route(state, prompt, seed) for seed, prompt in enumerate(turns)}
        assert all(not v.prefix.blocks for v in state.workers.values())
        assert len(picked) > 1


def test_a_restarted_worker_forgets_what_it_had_cached() -> None:
    state = holders(2)
    prompt = prompt_blocks("a", conversation(1)[0])
    worker = route(state, prompt)
    assert state.workers[worker].prefix.matched(prompt) == len(prompt)
    recs = {w: v.record for w, v in state.workers.items()}
    recs[worker] = msgspec.structs.replace(recs[worker], instance="i1")
    state.apply(MembershipChanged(recs))
    assert state.workers[worker].prefix.matched(prompt) == 0
