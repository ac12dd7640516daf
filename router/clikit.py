"""A tiny subcommand dispatcher shared by `lora-router` and `lora-bench`.

Each subcommand lives in its own module exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only
when their subcommand runs, so ``--help`` stays fast and one broken optional
dependency never takes the whole CLI down.

A command that cannot start because of what it was given (a bad flag, config file or
port) raises `UsageError`; like argparse's own errors it becomes one line on stderr
and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Sequence
from typing import Protocol


class Command(Protocol):
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class UsageError(Exception):
    """What the operator gave cannot work; the message names the flag or file and the value."""


class _OneLineParser(argparse.ArgumentParser):
    """argparse's errors without the usage block: one line a newcomer reads at once (exit code 2 as argparse)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(prog: str, description: str, commands: dict[str, str]) -> argparse.ArgumentParser:
    parser = _OneLineParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_path in commands.items():
        module: Command = importlib.import_module(module_path)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def dispatch(prog: str, description: str, commands: dict[str, str], argv: Sequence[str] | None) -> int:
    parser = build_parser(prog, description, available(commands))
    args = parser.parse_args(argv)
    try:
        return int(args._module.run(args) or 0)
    except UsageError as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def version() -> str:
    """The installed distribution's version (one for both CLIs: they ship in one package)."""
    try:
        return importlib.metadata.version("lora-router")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def available(commands: dict[str, str]) -> dict[str, str]:
    """Subcommands whose module is installed; lets the CLI run while optional parts are absent."""
    def present(module_path: str) -> bool:
        try:
            return importlib.util.find_spec(module_path) is not None
        except ModuleNotFoundError:
            return False

    return {n: m for n, m in commands.items() if present(m)}
