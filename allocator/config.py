"""The replica-factor config: how many replicas each adapter gets and how placement behaves.

Global defaults apply to every adapter; `adapters:` overrides them per exact
name or per glob pattern (`medical-*`). An exact name always beats a pattern;
among matching patterns the longest wins (the most specific, by length), and
equal lengths are broken by the pattern's text so every replica agrees.
Overrides are partial: an unset field inherits the default.

`decode_config` is the one YAML -> Struct path for every config file of the
project, so that any error reads the same: file, key path, bad value.
"""

from __future__ import annotations

import copy
import fnmatch
import re
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

T = TypeVar("T")

Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0)]


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file, the key and the value."""


def _check_policy(p: ReplicaPolicy) -> None:
    if not p.scale_down_threshold < p.scale_up_threshold:
        raise ValueError(f"scale_down_threshold ({p.scale_down_threshold}) must be below "
                         f"scale_up_threshold ({p.scale_up_threshold})")
    if p.max_replicas is not None and p.max_replicas < max(p.min_replicas, 1):
        raise ValueError(f"max_replicas ({p.max_replicas}) must be >= min_replicas "
                         f"({p.min_replicas}) and >= 1")


class ReplicaPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The effective replica-factor settings of one adapter.

    Replicas needed = ceil(demand / (per_replica_capacity x threshold)) for each
    demand measure that has a capacity, the largest wins. Scale-up uses
    `scale_up_threshold` at once (after `scale_up_cooldown_s`); scale-down uses
    the lower `scale_down_threshold` and waits `scale_down_cooldown_s`, so demand
    wandering between the two never flaps the count.
    """

    per_replica_rps: Positive | None = 10.0
    """Requests per second one replica should carry; null = ignore arrival rate."""
    per_replica_concurrent: Positive | None = 32.0
    """Concurrent requests one replica should carry; null = ignore in-flight counts."""
    min_replicas: Count = 1
    """Replicas kept with no demand; 0 = unloaded until requested."""
    max_replicas: Annotated[int, Meta(ge=1)] | None = None
    """Upper bound; null = as many as there are candidate workers."""
    scale_up_threshold: Annotated[float, Meta(gt=0, le=1)] = 1.0
    """Share of the replicas' capacity above which replicas are added."""
    scale_down_threshold: Annotated[float, Meta(gt=0, lt=1)] = 0.6
    """Share below which replicas are removed; lower than the scale-up one, so the count does not flap."""
    scale_up_cooldown_s: NonNegative = 0.0
    """Wait after a change before replicas are added."""
    scale_down_cooldown_s: NonNegative = 60.0
    """How long demand must stay low before a replica is removed."""

    def __post_init__(self) -> None:
        _check_policy(self)


class PolicyOverride(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True,
                     omit_defaults=True):
    """Fields of ReplicaPolicy to replace for matching adapters; absent = inherit."""

    per_replica_rps: Positive | UnsetType | None = UNSET
    per_replica_concurrent: Positive | UnsetType | None = UNSET
    min_replicas: Count | UnsetType = UNSET
    max_replicas: Annotated[int, Meta(ge=1)] | UnsetType | None = UNSET
    scale_up_threshold: Annotated[float, Meta(gt=0, le=1)] | UnsetType = UNSET
    scale_down_threshold: Annotated[float, Meta(gt=0, lt=1)] | UnsetType = UNSET
    scale_up_cooldown_s: NonNegative | UnsetType = UNSET
    scale_down_cooldown_s: NonNegative | UnsetType = UNSET

    def apply(self, base: ReplicaPolicy) -> ReplicaPolicy:
        changes = {f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not UNSET}
        return msgspec.structs.replace(base, **changes)


class PlanBudget(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How much of the placement diff one reconcile tick may start."""

    loads_per_worker: Annotated[int, Meta(ge=1)] = 2
    """Adapter loads in flight on one worker at a time (a load competes with serving)."""
    actions_per_tick: Annotated[int, Meta(ge=1)] = 64
    """Loads and unloads one reconcile round may start across the fleet."""


class ReplicaConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The `placement:` section of the router config."""

    defaults: ReplicaPolicy = msgspec.field(default_factory=ReplicaPolicy)
    adapters: dict[str, PolicyOverride] = {}
    """Per-adapter overrides keyed by exact name or glob pattern (`medical-*`)."""
    epsilon: NonNegative = 0.25
    """A worker's expected load stays under (1 + epsilon) x the fleet mean (per unit weight)."""
    default_slots: Annotated[int, Meta(ge=1)] = 8
    """Slot capacity for a worker that does not announce one."""
    sticky: bool = True
    """Keep a current holder while it stays in the adapter's top replicas + sticky_k (or lower, while fewer
    better workers could take it) and within (1 + epsilon) x the mean; new assignments leave room for one more
    worker, so a join moves about its fair share."""
    sticky_k: Count = 2
    """How many ranks past its replica count a current holder may fall and keep the adapter (with `sticky`)."""
    rise_tau_s: NonNegative = 0.0
    """Estimator time constant for rising demand; 0 = follow a rise at once."""
    fall_tau_s: NonNegative = 30.0
    """Estimator time constant for falling demand."""
    plan: PlanBudget = msgspec.field(default_factory=PlanBudget)

    def __post_init__(self) -> None:
        for pattern, override in self.adapters.items():
            try:
                override.apply(self.defaults)
            except ValueError as exc:
                raise ValueError(f"adapters[{pattern!r}]: {exc}") from None


_GLOB = re.compile(r"[*?\[]")


def policy_for(config: ReplicaConfig, adapter_name: str) -> ReplicaPolicy:
    """The effective policy: exact name, else the longest matching glob, else the defaults."""
    override = config.adapters.get(adapter_name)
    if override is None:
        matches = [p for p in config.adapters if _GLOB.search(p) and fnmatch.fnmatchcase(adapter_name, p)]
        if not matches:
            return config.defaults
        override = config.adapters[min(matches, key=lambda p: (-len(p), p))]
    return override.apply(config.defaults)


def decode_config(data: bytes, type_: type[T], source: str) -> T:
    """Parse YAML (JSON is YAML) into `type_`; any problem is a ConfigError naming file, key, value.

    The error names every problem of the file, one line each, not only the first (see `decode_all`)."""
    value, problems = decode_all(data, type_, source)
    if problems:
        raise ConfigError("\n".join(problems))
    assert value is not None
    return value


def decode_all(data: bytes, type_: type[T], source: str) -> tuple[T | None, list[str]]:
    """Every schema problem of a file, and the value with the offending entries left out (None if none is left).

    msgspec stops at the first error; each found culprit (a value, an unknown key, an entry missing a
    required key) is dropped and the rest decoded again, so one run reports them all. The value lets
    callers run their cross-reference checks on whatever is left valid."""
    try:
        raw = msgspec.yaml.decode(data) if data.strip() else {}
    except msgspec.DecodeError as exc:
        return None, [f"{source}: not valid YAML: {exc}"]
    trial = copy.deepcopy(raw)
    problems: list[str] = []
    dropped: dict[tuple[str, ...], list[int]] = {}
    """Original path of a list -> original indices of the entries dropped from it (later indices shift)."""
    cleared: set[tuple[str, ...]] = set()
    while True:
        try:
            return msgspec.convert(trial, type_), problems
        except msgspec.ValidationError as exc:
            what, parts, value = _diagnose(trial, type_, str(exc))
        original = _original(parts, dropped)
        missing = _MISSING_FIELD.search(what)
        if not (missing and (*original, missing["field"]) in cleared):
            problems.append(_format(source, original, what, value))
        if not parts or value is _MISSING or not _drop(trial, parts, original, dropped):
            return None, problems
        cleared.add(tuple(original))


_MISSING_FIELD = re.compile(r"missing required field `(?P<field>[^`]+)`")


def _drop(trial: Any, parts: list[str], original: list[str], dropped: dict[tuple[str, ...], list[int]]) -> bool:
    """Take the culprit out of `trial` (a dict key, or a list entry: remembered so later indices map back)."""
    parent = trial
    for step in parts[:-1]:
        parent = parent[int(step)] if isinstance(parent, list) else parent[step]
    last = parts[-1]
    if isinstance(parent, list) and last.isdigit():
        del parent[int(last)]
        dropped.setdefault(tuple(original[:-1]), []).append(int(original[-1]))
        return True
    if isinstance(parent, dict) and last in parent:
        del parent[last]
        return True
    return False


def _original(parts: list[str], dropped: dict[tuple[str, ...], list[int]]) -> list[str]:
    """A path in the pruned trial as a path in the file: list indices shifted back over dropped entries."""
    out: list[str] = []
    for part in parts:
        gone = dropped.get(tuple(out))
        if gone and part.isdigit():
            index = int(part)
            for removed in sorted(gone):
                if removed <= index:
                    index += 1
            part = str(index)
        out.append(part)
    return out


_AT = re.compile(r"^(?P<what>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_UNKNOWN = re.compile(r"unknown field `(?P<field>[^`]+)`")
_MISSING = object()


def _diagnose(raw: Any, type_: type, message: str) -> tuple[str, list[str], Any]:
    """msgspec's message -> (what is wrong, key path, the offending value)."""
    m = _AT.match(message)
    what, at = (m["what"], m["path"]) if m else (message, "")
    steps = [s1 or s2 for s1, s2 in _SEGMENT.findall(at)]
    unknown = _UNKNOWN.search(what)
    if unknown:
        steps.append(unknown["field"])
    parts, value = _locate(raw, steps, type_, message)
    return what, parts, value


def _format(source: str, parts: list[str], what: str, value: Any) -> str:
    got = "" if isinstance(value, (dict, list)) else f" (got {_short(value)})"
    return f"{source}: {_dotted(parts) or '(top level)'}: {what}{got}"


def _locate(raw: Any, steps: list[str], type_: type, message: str) -> tuple[list[str], Any]:
    """Follow msgspec's path; a dict key it hid as `[...]` is found by dropping entries in turn."""
    node, parts = raw, []
    for i, step in enumerate(steps):
        if step == "..." and isinstance(node, dict):
            step = _guilty_key(raw, steps[:i], node, type_, message)
        if isinstance(node, list) and step.isdigit() and int(step) < len(node):
            node = node[int(step)]
        elif isinstance(node, dict) and step in node:
            node = node[step]
        else:
            node = _MISSING
        parts.append(step)
        if node is _MISSING:
            break
    return parts, node


def _dotted(parts: list[str]) -> str:
    text = ""
    for part in parts:
        if part.isidentifier():
            text += f".{part}" if text else part
        else:
            text += f"[{part}]" if part.isdigit() else f"[{part!r}]"
    return text


def _guilty_key(raw: Any, prefix: list[str], node: dict[str, Any], type_: type, message: str) -> str:
    for candidate in node:
        trial = copy.deepcopy(raw)
        parent = trial
        for s in prefix:
            parent = parent[int(s)] if isinstance(parent, list) else parent[s]
        del parent[candidate]
        try:
            msgspec.convert(trial, type_)
        except msgspec.ValidationError as exc:
            if str(exc) == message:
                continue
        return str(candidate)
    return "..."


def _short(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
