"""router.waiting: the one polling loop returns the first truthy value, names what it waited for, and
lets a check fail fast with anything it does not ignore."""

from __future__ import annotations

import itertools

import pytest

from router.waiting import NotWithin, wait_until, wait_until_async


def test_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_until(lambda: next(counter) >= 3 and "done", timeout_s=5, what="three calls", interval_s=0) == "done"


def test_names_what_and_the_time_and_the_last_ignored_error() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("nobody there")

    with pytest.raises(NotWithin, match=r"the server: not within 0.1s \(last: ConnectionRefusedError: nobody"):
        wait_until(refused, timeout_s=0.1, what="the server", interval_s=0.01, ignoring=(OSError,))


def test_an_error_not_ignored_escapes_at_once() -> None:
    def dead() -> bool:
        raise RuntimeError("exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_until(dead, timeout_s=60, what="never")


def test_not_within_is_a_timeout() -> None:
    with pytest.raises(TimeoutError):
        wait_until(lambda: False, timeout_s=0, what="nothing")


async def test_async_twin_takes_sync_and_async_checks() -> None:
    counter = itertools.count()

    async def later() -> int:
        return next(counter) >= 2 and 7

    assert await wait_until_async(later, timeout_s=5, what="an async check", interval_s=0) == 7
    assert await wait_until_async(lambda: "now", timeout_s=5, what="a plain check") == "now"
    with pytest.raises(NotWithin, match="an answer: not within 0s"):
        await wait_until_async(lambda: None, timeout_s=0, what="an answer")
