"""Model name -> what to serve: an adapter, or the base model. Pure; the caller supplies the views."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import msgspec

from allocator.hrw import pick_weighted
from router.auth import Caller
from router.errors import ModelNotFound


class Target(msgspec.Struct, frozen=True):
    """`adapter` is None for the base model; `model` is the name the worker must see."""

    base: str | None
    adapter: str | None
    model: str


def resolve(
    requested: str,
    *,
    caller: Caller,
    bases: set[str],
    adapter_owner: Callable[[str], tuple[bool, str | None, str | None]],
    aliases: Mapping[str, Mapping[str, float]],
    sticky_key: str,
) -> Target:
    """Resolve `ADAPTER`, `BASE@ADAPTER`, an alias, or the base model's name.

    `adapter_owner(name)` answers (known, owner tenant, base model). A name the
    caller may not use raises the same 404 as an unknown one, so tenants cannot
    probe each other's adapters.
    """
    base_hint, sep, name = requested.partition("@")
    if not sep:
        name, base_hint = requested, ""
    elif base_hint not in bases:
        raise ModelNotFound(requested, _valid(bases))
    if not base_hint and name in bases:
        if caller.default_adapter:
            return _adapter(caller.default_adapter, caller, adapter_owner, aliases, sticky_key, requested, bases)
        return Target(base=name, adapter=None, model=name)
    return _adapter(name, caller, adapter_owner, aliases, sticky_key, requested, bases, base_hint or None)


def _adapter(
    name: str,
    caller: Caller,
    adapter_owner: Callable[[str], tuple[bool, str | None, str | None]],
    aliases: Mapping[str, Mapping[str, float]],
    sticky_key: str,
    requested: str,
    bases: set[str],
    base_hint: str | None = None,
) -> Target:
    variants = aliases.get(name)
    if variants is not None and caller.may_use(name, None):
        name = pick_weighted(sticky_key, variants)
    known, owner, base = adapter_owner(name)
    if not known or not caller.may_use(name, owner) or (base_hint and base and base != base_hint):
        raise ModelNotFound(requested, _valid(bases))
    return Target(base=base, adapter=name, model=name)


def _valid(bases: set[str]) -> str:
    return ", ".join(sorted(bases))
