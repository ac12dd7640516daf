"""The router's config file: one YAML document, validated with msgspec.

Secrets never live in it: API keys come from files (one key per line) or as
sha256 hex digests, and only digests are kept in memory for client keys. The
`placement` section is the allocator's replica-factor config.
"""

from __future__ import annotations

import hashlib
import os
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from allocator.config import ConfigError, ReplicaConfig, decode_all
from discovery.connect import EtcdSettings
from router.core.continuation import MigrationRules
from router.core.health import HealthRules
from router.core.prefix import PrefixRules
from router.errors import InvalidAdapter
from router.validation import validate_name, validate_source

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]


class AdapterEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A catalog adapter declared in the file, like vLLM's --lora-modules."""

    name: str
    """The name clients send as `model`."""
    source: str
    """Where workers load it from: a path under `security.allowed_path_prefixes`, or a URI whose scheme is in
    `security.allowed_schemes`."""
    base_model: str | None = None
    """The base model it was trained for; null = the fleet's base model."""
    rank: int = 8
    """LoRA rank: only workers whose maximum rank is at least this are given it."""
    tenant: str | None = None
    """The owning tenant: other tenants see the adapter as absent. Null = any caller may use it."""


class TenantConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One tenant: its keys and the adapters it may use."""

    keys_sha256: list[str] = []
    """sha256 hex digests of the tenant's keys (so keys need not be on disk)."""
    keys_file: str | None = None
    """A file of the tenant's keys, one per line (`#` comments); re-read on reload, so keys rotate without a restart."""
    adapters: list[str] = msgspec.field(default_factory=lambda: ["*"])
    """Glob patterns of the adapter (and alias) names this tenant may use among those no tenant owns; an
    adapter whose `tenant` is this one is usable whatever its name, one owned by another tenant never is."""
    default_adapter: str | None = None
    """Used when the tenant asks for the base model; must be usable by the tenant (checked at load)."""


class AuthConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Admin keys. Admin keys use every adapter and the admin API; with no admin and no tenant keys the router is
    open to anyone who reaches it."""

    admin_keys_sha256: list[str] = []
    """sha256 hex digests of admin keys."""
    admin_keys_file: str | None = None
    """A file of admin keys, one per line (`#` comments); re-read on reload."""


class SecurityConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What clients and the catalog may do: adapter sources, request sizes, headers."""

    allowed_path_prefixes: list[str] = []
    """Local adapter paths must resolve under one of these; empty = no local paths."""
    allowed_schemes: list[str] = msgspec.field(default_factory=lambda: ["file"])
    """Source schemes the catalog accepts: file, s3, https, hf."""
    allowed_source_prefixes: list[str] = []
    """Remote sources (s3://, https://, hf://) must start with one of these, e.g. s3://bucket/adapters/ or
    hf://my-org/ (the bucket or repo allow-list); empty = any source of an allowed scheme."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted; larger ones are answered 413 (before the upload with `Expect: 100-continue`)."""
    max_header_bytes: int = 16 * 1024
    """Largest request head (request line and headers) accepted."""
    worker_header: bool = True
    """Send x-lora-router-worker with the chosen worker's id."""


class TimeoutConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Time limits on workers and clients, in seconds."""

    connect_s: float = 2.0
    """Connecting to a worker; one that does not accept in time is not tried again for this request."""
    read_s: float = 600.0
    """Waiting for a worker's answer; past it the client gets 504 and the request is not sent again."""
    cold_start_timeout_s: float = 30.0
    """How long a request waits for its adapter's first load before it is answered 503."""
    drain_timeout_s: float = 30.0
    """How long an unload waits for the adapter's requests in flight on that worker to finish."""
    worker_call_s: float = 30.0
    """Admin calls to workers: load, unload, models."""
    client_header_s: Seconds = 60.0
    """A client connection that has not sent a whole request head within this (from its opening or its
    previous answer) is closed without an answer: slowloris clients cannot hold connections.
    Idle keep-alive connections are closed after the same time."""
    client_body_s: Seconds = 60.0
    """A request body not fully received within this is answered 408 and the connection closed."""


class ControlConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The control loops: ticks, leases, health, retries."""

    tick_s: float = 2.0
    """Control loop period: demand is published and, on the leader, the placement computed."""
    reconcile_s: float = 5.0
    """How often each router checks the workers' adapters against the placement and loads or unloads."""
    lease_ttl_s: int = 5
    """TTL of this router's leased etcd keys (leadership, demand report): a dead leader is replaced within about
    this."""
    health_probe_s: float = 2.0
    """How often a worker marked down is probed back."""
    down_after_failures: Annotated[int, msgspec.Meta(ge=1)] = 3
    """Consecutive 5xx answers that take a worker out of rotation; a refused or cut connection does at once.
    More than one, so a single request that makes workers fail (a poison request) does not eject them."""
    max_ejected_fraction: Fraction = 0.5
    """5xx answers never take more than this share of a pool's workers out of rotation (as Envoy's
    max_ejection_percent): a poison request repeated by a client cannot empty the fleet."""
    retry_budget_ratio: float = 0.2
    """Retries allowed as a fraction of recent requests, so a bad fleet sees no retry storm."""
    worker_ops_per_s: float = 10.0
    """Loads and unloads the reconciler sends one worker per second, at most (one at a time)."""
    retry_base_s: float = 0.5
    """First backoff after a transient load/unload failure; doubles per attempt, with jitter."""
    retry_max_s: float = 30.0
    """Longest backoff between retries of a transiently failed load or unload."""
    failed_retry_max_s: Seconds = 240.0
    """Cap of the backoff between retries of a load a worker refused (no adapter at the path, rank too high):
    files may appear later (a synced volume, a slow download) and are then loaded without anyone asking."""

    def health_rules(self) -> HealthRules:
        """What the fleet state's health state machine reads (router.core.health)."""
        return HealthRules(down_after_failures=self.down_after_failures,
                           max_ejected_fraction=self.max_ejected_fraction, probe_s=self.health_probe_s)


class MigrationConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Request migration: a stream cut by its worker continues on another holder, the client none the wiser."""

    max_migrations: Annotated[int, msgspec.Meta(ge=0)] = 3
    """Times one answer may move to another worker; 0 turns migration off (a cut stream then ends with an SSE
    error event)."""
    max_kept_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1 << 20
    """Text kept per stream so it can be continued; an answer longer than this is not migrated (memory bound:
    at most this per stream in flight)."""
    on: list[Literal["closed", "malformed", "timeout"]] = msgspec.field(
        default_factory=lambda: ["closed", "malformed", "timeout"])
    """Which cuts migrate: the worker closed or reset the connection (it died), sent something that is not
    HTTP, or went silent past `timeouts.read_s` (a worker still generating in vain is stopped by the closed
    connection)."""

    def rules(self) -> MigrationRules:
        """What router.core.continuation reads."""
        return MigrationRules(max_migrations=self.max_migrations, max_kept_bytes=self.max_kept_bytes,
                              on=frozenset(self.on))


class PrefixConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Prefix-cache-aware picking: among an adapter's holders with room, the one that likely has the prompt's
    beginning in its KV cache (vLLM's prefix caching), unless it is the busier by more than that is worth."""

    index_blocks: Annotated[int, msgspec.Meta(ge=0)] = 2048
    """Prompt blocks of 256 characters remembered per worker, least recently used forgotten first: 2,048 is
    about 128k tokens, a worker's KV cache. Memory: about 120 bytes a block once a worker's index is full
    (240 KiB per worker at the default; 235 MiB for 1,000 workers). 0 turns prefix-aware picking off."""
    tokens_per_request: Annotated[float, msgspec.Meta(gt=0)] = 64.0
    """Cached prompt tokens (about 4 characters each) worth as much as one more request in flight at a worker:
    lower keeps conversations on their worker longer, higher spreads them sooner. A running request slows a
    vLLM step far less than prefilling a block does, so a long history is worth several requests in flight;
    in the simulator's chat scenario 64 kept the most prompt tokens cached (docs/benchmarks.md)."""

    def rules(self) -> PrefixRules:
        """What router.core.prefix and the picking read."""
        return PrefixRules(index_blocks=self.index_blocks, tokens_per_request=self.tokens_per_request)


class RouterConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    base_model: str | None = None
    """The base model's name when no worker announces one (static `--worker` discovery)."""
    placement: ReplicaConfig = msgspec.field(default_factory=ReplicaConfig)
    adapters: list[AdapterEntry] = []
    aliases: dict[str, dict[str, float]] = {}
    """alias -> {adapter: weight}; sticky per user by HRW."""
    tenants: dict[str, TenantConfig] = {}
    auth: AuthConfig = msgspec.field(default_factory=AuthConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    timeouts: TimeoutConfig = msgspec.field(default_factory=TimeoutConfig)
    control: ControlConfig = msgspec.field(default_factory=ControlConfig)
    migration: MigrationConfig = msgspec.field(default_factory=MigrationConfig)
    prefix: PrefixConfig = msgspec.field(default_factory=PrefixConfig)
    workers: list[str] = []
    """Static worker URLs (used when no etcd discovery is given)."""
    worker_api_key_file: str | None = None
    """A file whose first line is the key the workers require (vLLM's `--api-key`); sent to every worker whose
    record names no key of its own."""
    worker_api_key_env: str | None = None
    """The environment variable holding that key, when `worker_api_key_file` is not set."""
    sticky_header: str = "x-lora-router-user"
    """Request header whose value keeps a caller on one variant of an alias, when the body has no `user`."""
    metrics_adapter_cap: int = 200
    """Adapters with their own metrics label; the rest share `__overflow__`, so metrics stay bounded."""
    etcd: EtcdSettings = EtcdSettings()
    """How every command reaches etcd (flags and LORA_ROUTER_ETCD* environment variables override it);
    read at start: a change applies on the next start."""


class Secrets(msgspec.Struct, kw_only=True):
    """What the config's key references resolve to; digests for client keys, the worker key in full."""

    admin_digests: frozenset[str] = frozenset()
    tenant_digests: dict[str, str] = {}
    """sha256 hex -> tenant name."""
    worker_api_key: str | None = None


class LoadedConfig(msgspec.Struct, kw_only=True):
    config: RouterConfig
    secrets: Secrets
    source: str
    version: str
    """sha256 over the file's bytes and every key file it names: shown in status, changes on every edit,
    including a rotated key, so a reload can tell a real change from a SIGHUP with nothing new."""
    parts: dict[str, str] = {}
    """Digest of each input by what names it ("config", "tenants.acme.keys_file", ...): what a reload changed."""


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_config(data: bytes, source: str) -> RouterConfig:
    """The file's config, or a ConfigError listing every problem (schema and references), one per line."""
    config, problems = decode_all(data or b"{}", RouterConfig, source)
    if config is not None:
        problems += _reference_problems(config, source)
    if problems or config is None:
        raise ConfigError("\n".join(problems))
    return config


def load_config(path: str | Path | None) -> LoadedConfig:
    """Read, validate and resolve secrets; raises ConfigError naming key, value and file."""
    if path is None:
        data, source = b"{}", "<defaults>"
    else:
        try:
            data, source = Path(path).read_bytes(), str(path)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    config = parse_config(data, source)
    contents: dict[str, str] = {}
    problems: list[str] = []
    for what, file in key_files(config).items():
        try:
            contents[what] = _read_key_file(file, what, source)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    parts = {"config": hashlib.sha256(data).hexdigest()}
    parts |= {what: hashlib.sha256(content.encode()).hexdigest() for what, content in contents.items()}
    version = hashlib.sha256("\n".join(f"{k} {v}" for k, v in sorted(parts.items())).encode()).hexdigest()
    return LoadedConfig(config=config, secrets=_resolve_secrets(config, contents, source), source=source,
                        version=version[:12], parts=parts)


def key_files(config: RouterConfig) -> dict[str, str]:
    """Every key file the config names, by the config key naming it: read at load, watched for rotation."""
    files = {f"tenants.{name}.keys_file": t.keys_file for name, t in config.tenants.items() if t.keys_file}
    if config.auth.admin_keys_file:
        files["auth.admin_keys_file"] = config.auth.admin_keys_file
    if config.worker_api_key_file:
        files["worker_api_key_file"] = config.worker_api_key_file
    return files


def changed_parts(old: LoadedConfig, new: LoadedConfig) -> list[str]:
    """Names of the inputs whose bytes differ (added and removed ones included); never their content."""
    return sorted(k for k in old.parts.keys() | new.parts.keys() if old.parts.get(k) != new.parts.get(k))


def _reference_problems(config: RouterConfig, source: str) -> list[str]:
    problems = []
    names = {a.name for a in config.adapters}
    for alias, variants in config.aliases.items():
        if not variants:
            problems.append(f"{source}: aliases.{alias}: needs at least one variant")
        for variant, weight in variants.items():
            if weight <= 0:
                problems.append(f"{source}: aliases.{alias}.{variant}: weight must be > 0, got {weight}")
        if alias in names:
            problems.append(f"{source}: aliases.{alias}: an adapter has the same name")
    problems += _check_tenants(config, source)
    problems += _adapter_problems(config, source)
    for digest in [*config.auth.admin_keys_sha256, *(d for t in config.tenants.values() for d in t.keys_sha256)]:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            problems.append(f"{source}: a keys_sha256 entry is not 64 lowercase hex characters")
    return problems


def _adapter_problems(config: RouterConfig, source: str) -> list[str]:
    """The config's adapters under the admin API's rules (names, sources, the security allow-lists), so a
    bad entry fails `config check`, a start and a reload alike before anything is written: a reload
    used to skip it and apply the rest. The base model must be given: workers register after the router
    starts, so the fleet cannot name it when the config's adapters are declared."""
    problems = []
    first: dict[str, int] = {}
    reserved = {config.base_model} if config.base_model else set()
    for i, entry in enumerate(config.adapters):
        where = f"{source}: adapters[{i}] ({entry.name!r})"
        if entry.name in first:
            problems.append(f"{where}: the same name as adapters[{first[entry.name]}]")
        first.setdefault(entry.name, i)
        try:
            validate_name(entry.name, reserved=reserved, param="name")
            validate_source(entry.source, config.security, param="source")
        except InvalidAdapter as exc:
            problems.append(f"{where}: {exc.message}")
        if entry.base_model is None and config.base_model is None:
            problems.append(f"{where}: base_model is missing (give it here or as the top-level base_model)")
    return problems


def _check_tenants(config: RouterConfig, source: str) -> list[str]:
    """Adapters name known tenants, and each default adapter is one its tenant may use (router.auth.Caller)."""
    problems = []
    owners = {a.name: a.tenant for a in config.adapters}
    for i, entry in enumerate(config.adapters):
        if entry.tenant is not None and entry.tenant not in config.tenants:
            problems.append(f"{source}: adapters[{i}] ({entry.name!r}): unknown tenant {entry.tenant!r}")
    for name, tenant in config.tenants.items():
        default = tenant.default_adapter
        owner = owners.get(default) if default is not None else None
        if default is None or owner == name:
            continue
        if owner is not None:
            problems.append(f"{source}: tenants.{name}.default_adapter: {default!r} belongs to tenant {owner!r}")
        elif not any(fnmatchcase(default, p) for p in tenant.adapters):
            problems.append(f"{source}: tenants.{name}.default_adapter: {default!r} matches none of "
                            f"tenants.{name}.adapters {tenant.adapters} and is not one of the config's adapters "
                            f"with tenant: {name}")
    return problems


def _read_key_file(path: str, what: str, source: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: {what}: cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: {what}: {path} is not UTF-8 text") from None


def _keys(content: str) -> list[str]:
    lines = content.splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _resolve_secrets(config: RouterConfig, contents: dict[str, str], source: str) -> Secrets:
    """Secrets from the key files' bytes (`contents`, by `key_files` name), read once by the caller."""
    admin = set(config.auth.admin_keys_sha256)
    admin.update(key_digest(k) for k in _keys(contents.get("auth.admin_keys_file", "")))
    tenants: dict[str, str] = {}
    for name, tenant in config.tenants.items():
        digests = list(tenant.keys_sha256)
        digests += [key_digest(k) for k in _keys(contents.get(f"tenants.{name}.keys_file", ""))]
        for digest in digests:
            if digest in tenants or digest in admin:
                raise ConfigError(f"{source}: tenants.{name}: a key is shared with another tenant or admin")
            tenants[digest] = name
    worker_key = None
    if config.worker_api_key_file:
        keys = _keys(contents["worker_api_key_file"])
        worker_key = keys[0] if keys else None
    elif config.worker_api_key_env:
        worker_key = os.environ.get(config.worker_api_key_env) or None
    if worker_key is not None and not worker_key.isprintable():
        raise ConfigError(f"{source}: the worker API key holds control characters")
    return Secrets(admin_digests=frozenset(admin), tenant_digests=tenants, worker_api_key=worker_key)
