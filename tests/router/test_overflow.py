"""Overflow: when every holder's batch is full (all its GPU LoRA slots busy with other adapters), the
request goes to the adapter's best-ranked worker with room, loaded there first, instead of queueing."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from collections.abc import Callable

import aiohttp

from router.localfleet import base_url

BASE = "sim-base"


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _overflows(router_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(router_url + "/metrics", timeout=10).read().decode()
    prefix = "lora_router_overflows_total{"
    return {line.split('outcome="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


def test_a_full_holder_overflows_to_a_worker_with_room(start_workers: Callable, start_router: Callable,
                                                      adapter_dirs: Callable, poll_until: Callable) -> None:
    names = [f"ov-{i}" for i in range(8)]
    root = adapter_dirs(names[0]).parent
    for name in names[1:]:
        adapter_dirs(name)
    workers = start_workers(2, extra_args=("--speed", "1", "--max-loras", "1", "--max-cpu-loras", "16"))
    config = {
        "security": {"allowed_path_prefixes": [str(root)]},
        "control": {"tick_s": 0.5, "reconcile_s": 1.0},
        "placement": {"defaults": {"scale_down_cooldown_s": 600}},
        "adapters": [{"name": n, "source": str(root / n), "base_model": BASE} for n in names],
    }
    router = start_router(config, workers=[base_url(w) for w in workers])

    def placed_once() -> dict[str, str] | None:
        loras = _get_json(router.url + "/v1/loras")["data"]
        holders = {a["name"]: a["holders"] for a in loras}
        return ({n: h[0] for n, h in holders.items()} if all(len(holders.get(n, [])) == 1 for n in names)
                else None)

    holder_of = poll_until(placed_once, 30, what="every adapter held by exactly one worker")
    shared, _ = Counter(holder_of.values()).most_common(1)[0]
    busy, wanted = [n for n in names if holder_of[n] == shared][:2]

    async def run() -> tuple[str, str]:
        async with aiohttp.ClientSession() as http:
            long = {"model": busy, "prompt": "x", "max_tokens": 400, "ignore_eos": True, "stream": True}
            async with http.post(router.url + "/v1/completions", json=long) as stream:
                assert stream.status == 200
                await stream.content.readline()  # in flight: the holder's only GPU slot is busy's
                short = {"model": wanted, "prompt": "x", "max_tokens": 2, "ignore_eos": True}
                async with http.post(router.url + "/v1/completions", json=short) as r:
                    assert r.status == 200, await r.text()
                    return stream.headers["x-lora-router-worker"], r.headers["x-lora-router-worker"]

    busy_worker, served_by = asyncio.run(run())
    assert busy_worker == shared
    assert served_by != shared, f"{wanted} queued behind {busy} on {shared}"
    assert _overflows(router.url).get("loaded") == 1.0
