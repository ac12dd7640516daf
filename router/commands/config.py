"""`lora-router config check FILE`: validate a router config file and print what takes effect."""

from __future__ import annotations

import argparse
import sys

import msgspec

from allocator.config import ConfigError, policy_for
from router.config import load_config

HELP = "Validate a router config file (its placement: section is the replica-factor config)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="print the effective config (defaults filled in), "
                                         "or every error (one line each: file, key, value) and exit 1")
    check.add_argument("file", metavar="FILE", help="the YAML (or JSON) config file")
    check.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    check.add_argument("--adapter", action="append", default=[], metavar="NAME",
                       help="also print the replica policy that applies to this adapter name "
                            "(exact override, else the longest matching pattern, else defaults); "
                            "repeatable")


def run(args: argparse.Namespace) -> int:
    try:
        loaded = load_config(args.file)
    except ConfigError as exc:
        for problem in str(exc).splitlines():
            print(f"error: {problem}", file=sys.stderr)
        return 1
    effective = msgspec.to_builtins(loaded.config)
    if args.adapter:
        effective["effective_policies"] = {
            name: msgspec.to_builtins(policy_for(loaded.config.placement, name)) for name in args.adapter}
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(effective)).decode() + "\n")
    else:
        sys.stdout.write(msgspec.yaml.encode(effective).decode())
    return 0
