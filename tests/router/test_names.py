"""Model names: ADAPTER, BASE@ADAPTER, aliases sticky per user, the base model, tenant defaults."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.core.names import OPEN, Caller, Target, resolve
from router.core.records import AdapterRecord
from router.errors import ModelNotFound

CATALOG = {
    n: AdapterRecord(name=n, source=f"/m/{n}", base_model=b, tenant=t)
    for n, b, t in [("sql", "llama", None), ("support-v1", "llama", None), ("support-v2", "llama", None),
                    ("acme-chat", "llama", "acme"), ("mistral-sql", "mistral", None)]
}
ALIASES = {"support": {"support-v1": 90.0, "support-v2": 10.0}}


def _resolve(model: str, caller: Caller = OPEN, user: str = "", rng: random.Random | None = None) -> Target:
    return resolve(model, caller=caller, bases={"llama", "mistral"}, catalog=CATALOG, aliases=ALIASES,
                   sticky_key=user, rng=rng or random.Random(0))


def test_adapter_and_base_at_adapter() -> None:
    assert _resolve("sql") == Target(base="llama", adapter="sql", model="sql")
    assert _resolve("llama@sql") == Target(base="llama", adapter="sql", model="sql")
    with pytest.raises(ModelNotFound):
        _resolve("mistral@sql")
    with pytest.raises(ModelNotFound):
        _resolve("gpt@sql")


def test_the_base_model_or_a_tenants_default_adapter() -> None:
    assert _resolve("llama") == Target(base="llama", adapter=None, model="llama")
    acme = Caller(tenant="acme", patterns=("acme-*",), default_adapter="acme-chat")
    assert _resolve("llama", acme).adapter == "acme-chat"


def test_aliases_split_by_weight_and_stick_per_user() -> None:
    picks = Counter(_resolve("support", user=f"user-{i}").adapter for i in range(2000))
    assert 0.85 < picks["support-v1"] / 2000 < 0.95
    assert {_resolve("support", user="alice").adapter for _ in range(20)} == {_resolve("support", user="alice").adapter}


def test_an_alias_without_a_sticky_key_is_drawn_by_weight_per_request() -> None:
    rng = random.Random(7)
    picks = Counter(_resolve("support", rng=rng).adapter for _ in range(2000))
    assert 0.87 < picks["support-v1"] / 2000 < 0.93


def test_other_tenants_adapters_and_unknown_names_are_the_same_404() -> None:
    globex = Caller(tenant="globex", patterns=("*",))
    with pytest.raises(ModelNotFound) as unknown:
        _resolve("nope", globex)
    with pytest.raises(ModelNotFound) as foreign:
        _resolve("acme-chat", globex)
    assert unknown.value.body().replace(b"nope", b"X") == foreign.value.body().replace(b"acme-chat", b"X")
