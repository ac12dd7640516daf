"""Waiting on an event with a deadline, without asyncio.wait_for.

On Python 3.11, `asyncio.wait_for` can swallow a cancellation that arrives
just as the awaited event completes (fixed in 3.12, gh-86296): a loop built on
it may then never stop. `asyncio.timeout` has no such race.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """True once `event` is set, False after `timeout_s` seconds; cancellation always propagates."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
