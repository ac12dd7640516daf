"""The etcd connection flags shared by every command that talks to etcd, and the client they make."""

from __future__ import annotations

import argparse
from pathlib import Path

from discovery.etcd import EtcdClient, TlsConfig


def add_etcd_arguments(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--etcd", required=required, metavar="URL[,URL...]",
                   help="comma-separated etcd endpoints (http://host:2379; https:// for TLS)")
    p.add_argument("--etcd-prefix", default="/lora-router",
                   help="key prefix of this fleet in etcd (default /lora-router)")
    p.add_argument("--etcd-ca", default=None, metavar="FILE", help="CA bundle for etcd TLS")
    p.add_argument("--etcd-cert", default=None, metavar="FILE", help="client certificate for etcd TLS")
    p.add_argument("--etcd-key", default=None, metavar="FILE", help="client key for etcd TLS")
    p.add_argument("--etcd-user", default=None, help="etcd user name (needs --etcd-password-file)")
    p.add_argument("--etcd-password-file", default=None, metavar="FILE",
                   help="file holding the etcd user's password (first line)")


def endpoints(value: str) -> list[str]:
    found = [e.strip() for e in value.split(",") if e.strip()]
    if not found:
        raise ValueError("--etcd needs at least one endpoint")
    return found


async def client_from_args(args: argparse.Namespace, check: bool = True) -> EtcdClient:
    """Client for the flags above; with `check`, EtcdUnavailable / EtcdAuthFailed now if etcd says no
    (without, the first call finds out: for sidecars that must outwait an etcd that is still starting)."""
    tls = (TlsConfig(ca_file=args.etcd_ca, cert_file=args.etcd_cert, key_file=args.etcd_key)
           if args.etcd_ca or args.etcd_cert or args.etcd_key else None)
    password = (Path(args.etcd_password_file).read_text().splitlines() or [""])[0] \
        if args.etcd_password_file else None
    if check:
        return await EtcdClient.connect(endpoints(args.etcd), prefix=args.etcd_prefix, tls=tls,
                                        user=args.etcd_user, password=password)
    return EtcdClient(endpoints(args.etcd), prefix=args.etcd_prefix, tls=tls, user=args.etcd_user,
                      password=password)
