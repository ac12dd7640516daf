"""`lora-bench`: the simulated vLLM worker and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

from router.clikit import dispatch

COMMANDS: dict[str, str] = {
    "worker": "bench.commands.worker",
    "worker-profile": "bench.commands.worker_profile",
    "allocator": "bench.commands.allocator",
    "sim": "bench.commands.sim",
    "live": "bench.commands.live",
    "proxy": "bench.commands.proxy",
    "chaos": "bench.commands.chaos",
    "scale": "bench.commands.scale",
}

DESCRIPTION = (
    "lora-bench: worker runs a simulated vLLM worker (the real contract, a GPU performance "
    "model); worker-profile measures it; allocator benchmarks placement; sim runs the "
    "discrete-event fleet simulator; live drives real processes; proxy compares proxy "
    "overhead; chaos injects faults and counts what was lost; scale runs routers on a large fleet in "
    "etcd: memory, bytes written per placement change, time to apply it."
)


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch("lora-bench", DESCRIPTION, COMMANDS, argv)
