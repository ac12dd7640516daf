"""The replica-factor config: defaults, overrides, patterns, and errors naming file, key and value."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from alloc_helpers import run_cli

from allocator.config import ConfigError, ReplicaConfig, ReplicaPolicy, decode_config, policy_for


def test_every_field_has_a_default() -> None:
    config = ReplicaConfig()
    assert config.epsilon == 0.25 and config.sticky and config.defaults.min_replicas == 1
    assert decode_config(b"", ReplicaConfig, "empty.yaml") == config
    assert decode_config(b"{}", ReplicaConfig, "empty.yaml") == config


def test_exact_name_beats_the_longest_pattern_which_beats_shorter_ones() -> None:
    config = decode_config(b"""
defaults: {per_replica_rps: 8}
adapters:
  "medical-*": {min_replicas: 2}
  "medical-cardio-*": {min_replicas: 3, per_replica_rps: 4}
  "medical-cardio-7": {max_replicas: 5}
""", ReplicaConfig, "c.yaml")
    exact = policy_for(config, "medical-cardio-7")
    assert (exact.min_replicas, exact.max_replicas, exact.per_replica_rps) == (1, 5, 8)
    longest = policy_for(config, "medical-cardio-1")
    assert (longest.min_replicas, longest.per_replica_rps) == (3, 4)
    assert policy_for(config, "medical-x").min_replicas == 2
    assert policy_for(config, "legal-x") == config.defaults


def test_equal_length_patterns_resolve_the_same_everywhere() -> None:
    config = decode_config(b'adapters: {"a?-x": {min_replicas: 2}, "a*-x": {min_replicas: 3}}',
                           ReplicaConfig, "c.yaml")
    assert policy_for(config, "ab-x").min_replicas == 3  # "a*-x" < "a?-x" as text


def test_an_override_can_switch_a_measure_off() -> None:
    config = decode_config(b"adapters: {batch: {per_replica_concurrent: null}}", ReplicaConfig, "c.yaml")
    assert policy_for(config, "batch").per_replica_concurrent is None
    assert policy_for(config, "other").per_replica_concurrent == ReplicaPolicy().per_replica_concurrent


@pytest.mark.parametrize(("document", "path", "value"), [
    (b"epsilon: -0.5", "epsilon", "-0.5"),
    (b"sticky_k: many", "sticky_k", "'many'"),
    (b"defaults: {min_replicas: 1.5}", "defaults.min_replicas", "1.5"),
    (b"defaults: {per_replica_rps: 0}", "defaults.per_replica_rps", "0"),
    (b"defaults: {bogus_knob: 7}", "defaults.bogus_knob", "7"),
    (b'adapters: {"ok-*": {}, "legal-*": {min_replicas: two}}', "adapters['legal-*'].min_replicas", "'two'"),
    (b'adapters: {"a": {}, "b": {colour: red}}', "adapters.b.colour", "'red'"),
    (b"plan: {loads_per_worker: 0}", "plan.loads_per_worker", "0"),
])
def test_errors_name_the_file_the_key_and_the_value(document: bytes, path: str, value: str) -> None:
    with pytest.raises(ConfigError) as err:
        decode_config(document, ReplicaConfig, "/etc/lora/replicas.yaml")
    message = str(err.value)
    assert message.startswith("/etc/lora/replicas.yaml: ")
    assert f" {path}: " in message
    assert f"(got {value})" in message


def test_cross_field_errors_name_both_values() -> None:
    with pytest.raises(ConfigError, match=r"f\.yaml: defaults: scale_down_threshold \(0\.9\) must be "
                                          r"below scale_up_threshold \(0\.8\)"):
        decode_config(b"defaults: {scale_up_threshold: 0.8, scale_down_threshold: 0.9}", ReplicaConfig, "f.yaml")
    with pytest.raises(ConfigError, match=r"adapters\['big-\*'\]: max_replicas \(2\) must be >= min_replicas \(3\)"):
        decode_config(b'adapters: {"big-*": {min_replicas: 3, max_replicas: 2}}', ReplicaConfig, "f.yaml")


def test_broken_yaml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^bad\.yaml: not valid YAML"):
        decode_config(b"epsilon: [", ReplicaConfig, "bad.yaml")


def test_decode_config_serves_any_struct_type() -> None:
    class Outer(msgspec.Struct, forbid_unknown_fields=True):
        placement: ReplicaConfig = msgspec.field(default_factory=ReplicaConfig)

    with pytest.raises(ConfigError, match=r"^o\.yaml: placement\.epsilon: .*\(got 'x'\)"):
        decode_config(b"placement: {epsilon: x}", Outer, "o.yaml")
    assert decode_config(b"placement: {epsilon: 0.5}", Outer, "o.yaml").placement.epsilon == 0.5


def test_config_check_prints_the_effective_config(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text('placement:\n  epsilon: 0.1\n  adapters:\n    "medical-*": {min_replicas: 2}\n')
    done = run_cli("router.commands.config", "config", "check", str(path), "--json", "--adapter", "medical-x")
    assert done.returncode == 0, done.stderr
    effective = json.loads(done.stdout)
    assert effective["placement"]["epsilon"] == 0.1
    assert effective["placement"]["defaults"]["scale_down_cooldown_s"] == 60.0
    assert effective["effective_policies"]["medical-x"]["min_replicas"] == 2
    yaml_out = run_cli("router.commands.config", "config", "check", str(path))
    assert yaml_out.returncode == 0 and "epsilon: 0.1" in yaml_out.stdout


def test_config_check_reports_errors_with_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("placement:\n  defaults:\n    max_replicas: 0\n")
    done = run_cli("router.commands.config", "config", "check", str(path))
    assert done.returncode == 1
    assert f"{path}: placement.defaults.max_replicas:" in done.stderr and "(got 0)" in done.stderr
    assert done.stdout == ""
