"""Outlier ejection on 5xx: a broken worker leaves rotation, a poison request cannot empty the fleet."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

from router.core.health import should_eject
from router.localfleet import base_url

BASE = "sim-base"


@pytest.mark.parametrize(("failures", "down", "pool", "expected"), [
    (2, 0, 4, False),   # under the threshold of 3
    (3, 0, 4, True),
    (9, 2, 4, False),   # two of four are out already: a third would pass half the pool
    (3, 1, 4, True),
    (5, 0, 1, False),   # the only worker is never ejected by its answers
    (3, 0, 2, True),
    (3, 1, 2, False),
])
def test_ejection_needs_consecutive_failures_and_a_pool_to_spare(failures: int, down: int, pool: int,
                                                                 expected: bool) -> None:
    assert should_eject(failures, threshold=3, down=down, pool=pool, max_fraction=0.5) is expected


def _complete(url: str) -> tuple[int, str | None]:
    body = json.dumps({"model": BASE, "prompt": "x", "max_tokens": 1}).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("x-lora-router-worker")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("x-lora-router-worker")


def _healthy(url: str) -> dict[str, bool]:
    with urllib.request.urlopen(url + "/v1/router/status", timeout=10) as r:
        return {w["url"]: w["healthy"] for w in json.loads(r.read())["workers"]}


def test_a_worker_answering_500s_is_ejected_and_its_requests_retried(start_workers: Callable,
                                                                    start_router: Callable) -> None:
    good = base_url(start_workers(1, extra_args=("--speed", "0"))[0])
    bad = base_url(start_workers(1, extra_args=("--speed", "0", "--fail-rate", "1"))[0])
    router = start_router({"control": {"health_probe_s": 60}}, workers=[good, bad])
    answers = [_complete(router.url) for _ in range(30)]
    assert all(status == 200 for status, _ in answers), answers
    assert _healthy(router.url) == {good: True, bad: False}


def test_a_lone_worker_answering_500s_stays_in_rotation(start_workers: Callable, start_router: Callable) -> None:
    """What a poison request does: every answer is a 500, relayed; the worker is not taken out for it."""
    bad = base_url(start_workers(1, extra_args=("--speed", "0", "--fail-rate", "1"))[0])
    router = start_router({"control": {"health_probe_s": 60}}, workers=[bad])
    statuses = [_complete(router.url)[0] for _ in range(10)]
    assert statuses == [500] * 10
    assert _healthy(router.url) == {bad: True}
