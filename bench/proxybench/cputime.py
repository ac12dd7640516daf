"""CPU time of a process tree, from /proc: what a proxy spent, however many processes and threads it runs."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, user+sys CPU seconds) of one live process; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_s(pid: int) -> float:
    """user+sys CPU seconds of `pid` and every live descendant, all threads included.

    Children that already exited are not counted: the processes measured here
    (proxies and their workers) live for the whole run.
    """
    stats = {int(p): s for p in os.listdir("/proc") if p.isdigit() and (s := _stat(p)) is not None}
    children: dict[int, list[int]] = {}
    for child, (parent, _) in stats.items():
        children.setdefault(parent, []).append(child)
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        if p in stats:
            total += stats[p][1]
            stack.extend(children.get(p, ()))
    return total
