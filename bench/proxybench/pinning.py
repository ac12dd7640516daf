"""Which core the proxy gets and which the worker and load generator share, and argv that pins a child."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Sequence

import msgspec

_EXEC_PINNED = "import os,sys; os.sched_setaffinity(0,{int(sys.argv[1])}); os.execvp(sys.argv[2], sys.argv[2:])"


class Cores(msgspec.Struct, frozen=True):
    proxy: int | None
    load: int | None
    """None: fewer than two usable cores, nothing is pinned."""


def choose_cores() -> Cores:
    usable = sorted(os.sched_getaffinity(0))
    return Cores(proxy=usable[0], load=usable[1]) if len(usable) >= 2 else Cores(proxy=None, load=None)


def pinned(argv: Sequence[str], core: int | None) -> list[str]:
    """`argv` run on `core` from its first instruction, so every thread and child it starts stays there.

    taskset when installed; otherwise the interpreter sets its own affinity and
    execs `argv` (affinity survives exec), which is exactly what taskset does.
    """
    if core is None:
        return list(argv)
    if shutil.which("taskset"):
        return ["taskset", "-c", str(core), *argv]
    return [sys.executable, "-c", _EXEC_PINNED, str(core), *argv]


def pin_running(pid: int, core: int | None) -> None:
    """Pin a process that is already running, every thread of it (taskset -a -p)."""
    if core is None:
        return
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), {core})
