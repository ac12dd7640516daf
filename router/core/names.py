"""Who is calling and what they may use; model name -> what to serve (an adapter, or the base model).

Pure: the caller supplies the views (catalog, bases, aliases) and the randomness."""

from __future__ import annotations

import random
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from fnmatch import fnmatchcase

import msgspec

from allocator.hrw import pick_weighted
from router.core.records import AdapterRecord
from router.errors import ModelNotFound


class Caller(msgspec.Struct, frozen=True):
    """Who sent a request: admin, a tenant, or anyone (no auth configured)."""

    tenant: str | None = None
    admin: bool = False
    open: bool = False
    patterns: tuple[str, ...] = ("*",)
    default_adapter: str | None = None

    def may_use(self, name: str, owner: str | None) -> bool:
        """An adapter's owner decides first: its own tenant may use it whatever its name, other tenants see
        it as absent. The tenant's patterns grant the adapters nobody owns (and aliases)."""
        if self.admin or self.open:
            return True
        if owner is not None:
            return owner == self.tenant
        return any(fnmatchcase(name, p) for p in self.patterns)


OPEN = Caller(open=True)


class Target(msgspec.Struct, frozen=True):
    """`adapter` is None for the base model; `model` is the name the worker must see."""

    base: str | None
    adapter: str | None
    model: str


def resolve(
    requested: str,
    *,
    caller: Caller,
    bases: AbstractSet[str],
    catalog: Mapping[str, AdapterRecord],
    aliases: Mapping[str, Mapping[str, float]],
    sticky_key: str,
    rng: random.Random,
) -> Target:
    """Resolve `ADAPTER`, `BASE@ADAPTER`, an alias, or the base model's name.

    A name the caller may not use raises the same 404 as an unknown one, so
    tenants cannot probe each other's adapters. An alias picks its variant by
    HRW over `sticky_key`, so one user keeps landing on the same variant; without
    a key (no `user`, no sticky header: the OpenAI SDK's default) it draws one by
    weight from `rng` per request, since one HRW pick over "" would send all such
    traffic to a single variant.
    """
    base_hint: str | None
    base_hint, sep, name = requested.partition("@")
    if not sep:
        name, base_hint = requested, None
    elif base_hint not in bases:
        raise ModelNotFound(requested, _valid(bases))
    if base_hint is None and name in bases:
        if not caller.default_adapter:
            return Target(base=name, adapter=None, model=name)
        name = caller.default_adapter
    variants = aliases.get(name)
    if variants is not None and caller.may_use(name, None):
        name = pick_weighted(sticky_key, variants) if sticky_key else _draw(variants, rng)
    record = catalog.get(name)
    if record is None or not caller.may_use(name, record.tenant) or (base_hint and record.base_model != base_hint):
        raise ModelNotFound(requested, _valid(bases))
    return Target(base=record.base_model, adapter=name, model=name)


def _draw(variants: Mapping[str, float], rng: random.Random) -> str:
    """A variant drawn with probability proportional to its weight (names sorted: same rng, same pick)."""
    names = sorted(variants)
    return rng.choices(names, weights=[variants[n] for n in names])[0]


def _valid(bases: AbstractSet[str]) -> str:
    return ", ".join(sorted(bases))
