"""Waiting for a condition with a deadline: the one polling loop of the project.

Starting processes, a router seeing its workers, a test waiting for a placement: each
polls a check until it holds, never sleeps for a guessed time, and fails naming what
it waited for. `NotWithin` is a `TimeoutError`, so callers that measure (chaos's
recovery times) or translate (a child that never became healthy) catch one type, and
a test that lets it escape fails with the message.

Not for fixed-duration waits (an outage held for N seconds) nor for the product's
retry and backoff loops, whose pacing is behaviour, not waiting.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

DEFAULT_INTERVAL_S = 0.05


class NotWithin(TimeoutError):
    """A condition did not hold within its deadline; the message names it, the time, and the last error seen."""

    def __init__(self, what: str, timeout_s: float, last_error: BaseException | None = None) -> None:
        detail = f" (last: {type(last_error).__name__}: {last_error})" if last_error is not None else ""
        super().__init__(f"{what}: not within {timeout_s:g}s{detail}")
        self.what = what
        self.timeout_s = timeout_s
        self.last_error = last_error


def wait_until(check: Callable[[], T], *, timeout_s: float, what: str, interval_s: float = DEFAULT_INTERVAL_S,
               ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Call `check` every `interval_s` until it returns a truthy value, and return that value.

    An exception of a type in `ignoring` counts as "not yet" (a server still starting refuses
    connections); any other escapes at once, so a check can fail fast (a child that died).
    The check runs once more at the deadline, so a slow check still gets its last chance.
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = check()
        except ignoring as exc:
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            raise NotWithin(what, timeout_s, last_error)
        time.sleep(interval_s)


@overload
async def wait_until_async(check: Callable[[], Awaitable[T]], *, timeout_s: float, what: str,
                           interval_s: float = ..., ignoring: tuple[type[BaseException], ...] = ()) -> T: ...


@overload
async def wait_until_async(check: Callable[[], T], *, timeout_s: float, what: str,
                           interval_s: float = ..., ignoring: tuple[type[BaseException], ...] = ()) -> T: ...


async def wait_until_async(check: Callable[[], object], *, timeout_s: float, what: str,
                           interval_s: float = DEFAULT_INTERVAL_S,
                           ignoring: tuple[type[BaseException], ...] = ()) -> object:
    """`wait_until` for an event loop: `check` may be a plain function or return an awaitable."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except ignoring as exc:
            last_error = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            raise NotWithin(what, timeout_s, last_error)
        await asyncio.sleep(interval_s)
