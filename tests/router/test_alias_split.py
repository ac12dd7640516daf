"""An A/B alias through a real router: random by weight per request without a stickiness key, sticky with one."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import aiohttp

from router.localfleet import base_url

BASE = "sim-base"
SPLIT = {"support-v1": 90, "support-v2": 10}


def _router(start_workers: Callable, start_router: Callable, adapter_dirs: Callable):
    root = adapter_dirs("support-v1").parent
    adapter_dirs("support-v2")
    urls = [base_url(w) for w in start_workers(2, extra_args=("--speed", "0.01", "--max-loras", "4"))]
    config = {
        "security": {"allowed_path_prefixes": [str(root)]},
        "control": {"tick_s": 0.5, "reconcile_s": 1.0, "lease_ttl_s": 3},
        "adapters": [{"name": n, "source": str(root / n), "base_model": BASE} for n in SPLIT],
        "aliases": {"support": SPLIT},
    }
    return start_router(config, workers=urls)


async def _variants(url: str, bodies: list[dict[str, object]], headers: dict[str, str] | None = None) -> Counter:
    """The adapter that answered each request, as the worker echoed it in `model`."""
    limit = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as session:
        async def one(body: dict[str, object]) -> str:
            async with limit, session.post(url + "/v1/completions", json=body, headers=headers) as r:
                assert r.status == 200, await r.text()
                return str((await r.json())["model"])
        return Counter(await asyncio.gather(*(one(b) for b in bodies)))


def _body(**extra: object) -> dict[str, object]:
    return {"model": "support", "prompt": "hi", "max_tokens": 1, **extra}


def test_requests_without_a_user_split_by_weight(start_workers, start_router, adapter_dirs) -> None:
    """Issue 14 #2: 40 of 40 requests without `user` went to one variant (HRW over the empty key)."""
    router = _router(start_workers, start_router, adapter_dirs)
    seen = asyncio.run(_variants(router.url, [_body() for _ in range(1000)]))
    assert set(seen) == set(SPLIT), seen
    share = seen["support-v1"] / 1000
    assert 0.86 <= share <= 0.94, f"support-v1 got {share:.1%} of 1,000 requests without a user (want 90% +- 4)"


def test_a_user_or_the_sticky_header_stays_on_one_variant(start_workers, start_router, adapter_dirs) -> None:
    router = _router(start_workers, start_router, adapter_dirs)
    for user in ("alice", "bob", "carol"):
        seen = asyncio.run(_variants(router.url, [_body(user=user) for _ in range(30)]))
        assert len(seen) == 1, f"user {user} landed on {dict(seen)}"
        by_header = asyncio.run(_variants(router.url, [_body() for _ in range(30)],
                                          headers={"x-lora-router-user": user}))
        assert by_header.keys() == seen.keys(), f"sticky header for {user}: {dict(by_header)} vs {dict(seen)}"
    users = asyncio.run(_variants(router.url, [_body(user=f"user-{i}") for i in range(300)]))
    assert 0.82 <= users["support-v1"] / 300 <= 0.98, f"300 users split {dict(users)}"
