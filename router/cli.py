"""`lora-router`: the router, its sidecar and its offline tools."""

from __future__ import annotations

from collections.abc import Sequence

from router.clikit import dispatch

COMMANDS: dict[str, str] = {
    "serve": "router.commands.serve",
    "demo": "router.commands.demo",
    "register": "router.commands.register",
    "status": "router.commands.status",
    "plan": "router.commands.plan",
    "config": "router.commands.config",
}

DESCRIPTION = (
    "lora-router: a front door for vLLM workers serving many LoRA adapters. "
    "serve runs the router; demo runs a complete system on this machine; register is the "
    "sidecar that announces a vLLM worker in etcd; status shows a fleet; plan places a "
    "synthetic fleet offline; config check validates a replica-factor config file."
)


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("lora-router", DESCRIPTION, COMMANDS, argv)

