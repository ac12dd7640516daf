"""How every command reaches etcd: one definition of the connection settings, read from three places.

`serve`, `register` and `status` (and anything else that talks to etcd) take the same settings, each
from, highest first: a flag (`--etcd-ca FILE`), an environment variable named after the flag
(`LORA_ROUTER_ETCD_CA`), the `etcd:` section of the router config file (`ca_file:`), the default.
The table `OPTIONS` is that definition; flags, environment names, the config section and the argv
handed to `serve --workers N` children are all derived from it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import msgspec

from discovery.etcd import EtcdClient, TlsConfig

DEFAULT_PREFIX = "/lora-router"


class EtcdSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """The config file's `etcd:` section; also what flags and environment variables resolve to."""

    endpoints: list[str] = []
    """http://host:2379 or https://host:2379 for TLS; empty for `serve` = start an embedded etcd."""
    prefix: str = DEFAULT_PREFIX
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    user: str | None = None
    password_file: str | None = None
    """First line: the password of `user`. A file, so the password shows neither in `ps` nor in the config."""

    def tls(self) -> TlsConfig | None:
        if not (self.ca_file or self.cert_file or self.key_file):
            return None
        return TlsConfig(ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file)

    def password(self) -> str | None:
        if not self.password_file:
            return None
        return (Path(self.password_file).read_text().splitlines() or [""])[0].strip()


class Option(NamedTuple):
    field: str
    flag: str
    metavar: str
    help: str

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def env(self) -> str:
        return "LORA_ROUTER_" + self.dest.upper()


OPTIONS = (
    Option("endpoints", "--etcd", "URL[,URL...]",
           "comma-separated etcd endpoints (http://host:2379; https:// for TLS)"),
    Option("prefix", "--etcd-prefix", "PREFIX", f"key prefix of this fleet in etcd (default {DEFAULT_PREFIX})"),
    Option("ca_file", "--etcd-ca", "FILE", "CA bundle for etcd TLS"),
    Option("cert_file", "--etcd-cert", "FILE", "client certificate for etcd TLS"),
    Option("key_file", "--etcd-key", "FILE", "client key for etcd TLS"),
    Option("user", "--etcd-user", "NAME", "etcd user name (needs --etcd-password-file)"),
    Option("password_file", "--etcd-password-file", "FILE", "file holding the etcd user's password (first line)"),
)


def add_etcd_arguments(p: argparse.ArgumentParser, endpoints_help: str | None = None,
                       config_flag: bool = True) -> None:
    """The etcd flags; with `config_flag`, also --config for a router config whose `etcd:` section applies
    (commands that have their own --config, as `serve`, read the section from that one)."""
    group = p.add_argument_group("etcd", "each also from the environment variable named in brackets, "
                                         "then from the config file's etcd: section")
    for opt in OPTIONS:
        text = endpoints_help if opt.field == "endpoints" and endpoints_help else opt.help
        group.add_argument(opt.flag, default=None, metavar=opt.metavar, help=f"{text} [{opt.env}]")
    if config_flag:
        group.add_argument("--config", default=os.environ.get("LORA_ROUTER_CONFIG"), metavar="FILE",
                           help="a router config file: only its etcd: section is read [LORA_ROUTER_CONFIG]")


class _EtcdSection(msgspec.Struct):
    """A router config seen for its `etcd:` section only (the rest is `serve`'s to validate)."""

    etcd: EtcdSettings = EtcdSettings()


def config_section(path: str | Path | None) -> EtcdSettings:
    """The `etcd:` section of a router config file; defaults without a file. Raises ValueError."""
    if path is None:
        return EtcdSettings()
    data = Path(path).read_bytes()
    try:
        return msgspec.yaml.decode(data, type=_EtcdSection).etcd if data.strip() else EtcdSettings()
    except msgspec.ValidationError as exc:
        raise ValueError(f"{path}: etcd: {exc}") from None


def resolve(args: argparse.Namespace, section: EtcdSettings, env: Mapping[str, str]) -> EtcdSettings:
    """Flags over environment over the config section over defaults."""
    values: dict[str, object] = {}
    for opt in OPTIONS:
        raw = getattr(args, opt.dest, None)
        if raw is None:
            raw = env.get(opt.env) or None
        if raw is not None:
            values[opt.field] = [e.strip() for e in raw.split(",") if e.strip()] if opt.field == "endpoints" else raw
    return msgspec.structs.replace(section, **values)


def settings_from_args(args: argparse.Namespace, section: EtcdSettings | None = None) -> EtcdSettings:
    """What the command line, the environment and the config (`section`, else the file of --config) say."""
    if section is None:
        section = config_section(getattr(args, "config", None))
    return resolve(args, section, os.environ)


def as_argv(settings: EtcdSettings) -> list[str]:
    """Flags that reproduce `settings` (for child processes); secrets stay in files, so argv holds none."""
    argv: list[str] = []
    for opt in OPTIONS:
        value = getattr(settings, opt.field)
        if value:
            argv += [opt.flag, ",".join(value) if isinstance(value, list) else value]
    return argv


async def connect(settings: EtcdSettings, check: bool = True) -> EtcdClient:
    """A client for `settings`; with `check`, EtcdUnavailable / EtcdAuthFailed now if etcd says no
    (without, the first call finds out: for sidecars that must outwait an etcd that is still starting)."""
    if not settings.endpoints:
        raise ValueError("no etcd endpoint: give --etcd, LORA_ROUTER_ETCD or etcd.endpoints in the config")
    tls, user, password = settings.tls(), settings.user, settings.password()
    if check:
        return await EtcdClient.connect(settings.endpoints, prefix=settings.prefix, tls=tls, user=user,
                                        password=password)
    return EtcdClient(settings.endpoints, prefix=settings.prefix, tls=tls, user=user, password=password)


async def client_from_args(args: argparse.Namespace, check: bool = True) -> EtcdClient:
    return await connect(settings_from_args(args), check)
