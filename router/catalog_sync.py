"""Turning a request to add an adapter into a catalog record, and the config's adapters into the catalog.

Every catalog write goes through `make_record`, so the admin API and the
config file obey one rule set: the name and source are validated (see
router.validation) before anything is written, the base model is the one
given or the fleet's only one, and the rank is read from the adapter's own
`adapter_config.json` when the router can see it (a worker would reject a
rank above its max, and placement needs the rank to pick workers that admit it).

Wiring in server.py: `await declare_config_adapters(catalog_store, loaded, state.bases())`
once at start-up, after the catalog store exists and before the loops run; the
control loop re-declares (not strictly) on the leader after a config reload.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Set as AbstractSet
from pathlib import Path

import msgspec

from allocator.config import ConfigError
from discovery.stores import CatalogStore
from router.config import LoadedConfig, RouterConfig, SecurityConfig
from router.core.records import AdapterRecord
from router.errors import InvalidAdapter, NotFound
from router.validation import SOURCE_MAX, validate_name, validate_source

log = logging.getLogger(__name__)

DEFAULT_RANK = 8


def reserved_names(config: RouterConfig, bases: AbstractSet[str]) -> set[str]:
    """Names an adapter may not take: base models (known to the fleet or the config) and aliases."""
    names = set(bases) | set(config.aliases)
    if config.base_model:
        names.add(config.base_model)
    return names


def adapter_rank(source: str) -> int | None:
    """The LoRA rank `r` from a local adapter's adapter_config.json, when the router can read it."""
    if not source.startswith("/"):
        return None
    try:
        config = json.loads((Path(source) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    rank = config.get("r") if isinstance(config, dict) else None
    return rank if isinstance(rank, int) and rank > 0 else None


def require_adapter_files(record: AdapterRecord, security: SecurityConfig) -> None:
    """vLLM's own 404 for a local path with no adapter in it, wherever the router can tell.

    The router can tell when the allowed prefix holding the path exists on its
    own filesystem (it mounts the adapters' volume, as the single-host setups
    and the demo do). A prefix it does not have is the workers' to judge; their
    refusals are retried with backoff, since files may still be on their way.
    The message is vLLM's, which shows `<path>` rather than the path.
    """
    if not record.source.startswith("/"):
        return
    for prefix in security.allowed_path_prefixes:
        root = os.path.realpath(prefix)
        if os.path.commonpath([record.source, root]) == root and os.path.isdir(root):
            if not (Path(record.source) / "adapter_config.json").is_file():
                raise NotFound(f"Loading lora {record.name} failed: No adapter found for <path>")
            return


def make_record(config: RouterConfig, bases: AbstractSet[str], name: object, source: object, *,
                base_model: object = None,
                rank: object = None, tenant: object = None, name_param: str = "lora_name",
                source_param: str = "lora_path") -> AdapterRecord:
    """A validated catalog record, or InvalidAdapter (400) naming the field at fault; `bases`: the base
    models the fleet serves."""
    valid_name = validate_name(name, reserved=reserved_names(config, bases), param=name_param)
    valid_source = validate_source(source, config.security, param=source_param)
    base = _base_model(config, bases, base_model)
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
        raise InvalidAdapter("rank must be a positive integer.", param="rank")
    if tenant is not None and (not isinstance(tenant, str) or tenant not in config.tenants):
        raise InvalidAdapter(f"Unknown tenant {tenant!r}.", param="tenant")
    found = adapter_rank(valid_source)
    return AdapterRecord(name=valid_name, source=valid_source, base_model=base,
                         rank=found or rank or DEFAULT_RANK, tenant=tenant)


def _base_model(config: RouterConfig, bases: AbstractSet[str], given: object) -> str:
    if given is not None:
        if not isinstance(given, str) or not given or len(given) > SOURCE_MAX or not given.isprintable():
            raise InvalidAdapter(f"base_model must be a non-empty printable string of at most {SOURCE_MAX} "
                                 "characters.", param="base_model")
        return given
    if config.base_model:
        return config.base_model
    if len(bases) == 1:
        return next(iter(bases))
    known = ", ".join(sorted(bases)) or "none known yet"
    raise InvalidAdapter(f"Say which base model the adapter is for (base_model); the fleet serves: {known}.",
                         param="base_model")


async def declare_config_adapters(catalog: CatalogStore, loaded: LoadedConfig, bases: AbstractSet[str], *,
                                  strict: bool = True) -> int:
    """Write the config's `adapters:` that the catalog lacks or holds differently; returns how many.

    At start-up (`strict`) an invalid entry stops the router with its reason; on
    a reload it is logged and skipped, and the rest still apply.
    """
    existing = await catalog.list()
    written = 0
    for i, entry in enumerate(loaded.config.adapters):
        try:
            record = make_record(loaded.config, bases, entry.name, entry.source, base_model=entry.base_model,
                                 rank=entry.rank, tenant=entry.tenant)
        except InvalidAdapter as exc:
            message = f"{loaded.source}: adapters[{i}] ({entry.name!r}): {exc.message}"
            if strict:
                raise ConfigError(message) from None
            log.error("config adapter skipped: %s", message)
            continue
        known = existing.get(record.name)
        if known is None or msgspec.structs.replace(known, created_at=0.0, failed=None) != record:
            await catalog.put(record)
            written += 1
    if written:
        log.info("wrote %d of the config's %d adapters to the catalog (the others were there already)", written,
                 len(loaded.config.adapters))
    return written
