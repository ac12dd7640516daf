"""`serve --workers N`: the supervisor's children never outlive it, however it dies."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from router.localfleet import base_url


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan may wait a moment for its new parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_children_exit_when_the_supervisor_is_killed_outright(
        start_workers: Callable, start_router: Callable, poll_until: Callable) -> None:
    worker = start_workers(1, extra_args=("--speed", "0"))[0]
    router = start_router({}, workers=[base_url(worker)], extra_args=("--workers", "2"))
    parent = router.proc.pid
    children = [int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()]
    assert len(children) == 2, children
    os.kill(parent, signal.SIGKILL)  # no chance to forward anything
    poll_until(lambda: not any(_running(pid) for pid in children), timeout_s=20,
               what="the children of a killed supervisor to exit")
