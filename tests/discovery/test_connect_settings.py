"""Which etcd setting wins: a flag over its environment variable over the config's etcd: section."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from discovery.connect import (
    OPTIONS,
    EtcdSettings,
    add_etcd_arguments,
    as_argv,
    config_section,
    resolve,
)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_etcd_arguments(parser)
    return parser.parse_args(list(argv))


def test_flag_over_environment_over_config_over_default(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("etcd: {endpoints: [http://from-config:2379], ca_file: /c/ca, user: cfg-user}\n"
                      "placement: {}\n")  # other sections belong to serve and are not read here
    section = config_section(config)
    env = {"LORA_ROUTER_ETCD": "http://from-env:2379, http://env-2:2379", "LORA_ROUTER_ETCD_CA": "/e/ca"}
    settings = resolve(_args("--etcd-ca", "/f/ca"), section, env)
    assert settings == EtcdSettings(endpoints=["http://from-env:2379", "http://env-2:2379"], ca_file="/f/ca",
                                    user="cfg-user")
    assert resolve(_args(), EtcdSettings(), {}) == EtcdSettings()
    assert resolve(_args(), EtcdSettings(), {}).prefix == "/lora-router"


def test_every_setting_has_a_flag_an_environment_variable_and_a_config_key() -> None:
    assert {o.field for o in OPTIONS} == set(EtcdSettings.__struct_fields__)
    full = EtcdSettings(endpoints=["https://a:2379", "https://b:2379"], prefix="/p", ca_file="ca", cert_file="c",
                        key_file="k", user="u", password_file="pw")
    assert resolve(_args(*as_argv(full)), EtcdSettings(), {}) == full
    assert resolve(_args(), EtcdSettings(), {o.env: ",".join(v) if isinstance(v := getattr(full, o.field), list)
                                             else v for o in OPTIONS}) == full


def test_a_bad_etcd_section_names_it(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("etcd: {endpoint: http://typo:2379}\n")
    with pytest.raises(ValueError, match="etcd"):
        config_section(config)
