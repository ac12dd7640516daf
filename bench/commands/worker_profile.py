"""`lora-bench worker-profile`: the simulated worker's latency and throughput vs concurrency and adapters.

Closed-loop clients (each sends its next request when the previous one ends)
drive the performance model in virtual time, so the table is exact and
instant; `--live` adds rows measured over HTTP against a real worker process
to show that the live worker follows the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.perfmodel import EngineModel, PerfParams, Sequence
from router.localfleet import base_url, make_adapter_dir, sim_worker

HELP = "Profile the simulated worker: latency/throughput vs concurrency and vs distinct adapters in flight."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-loras", type=int, default=4, help="GPU slots of the profiled worker (default 4)")
    p.add_argument("--output-tokens", type=int, default=64, help="tokens per request (default 64)")
    p.add_argument("--prompt-tokens", type=int, default=256, help="prompt tokens per request (default 256)")
    p.add_argument("--requests", type=int, default=400, help="requests per cell (default 400)")
    p.add_argument("--live", action="store_true", help="also measure a live worker over HTTP")
    p.add_argument("--speed", type=float, default=0.2, help="--speed of the live worker (default 0.2)")
    p.add_argument("--json", dest="json_out", default=None, help="write the results as JSON here")


def simulate(params: PerfParams, concurrency: int, adapters: int, requests: int, prompt: int,
             output: int) -> dict[str, float]:
    """Closed loop in virtual time; returns mean/p99 latency (ms) and throughput."""
    engine = EngineModel(params)
    now = 0.0
    issued = 0
    started_at: dict[int, float] = {}
    latencies: list[float] = []

    def issue() -> None:
        nonlocal issued
        rid = issued
        issued += 1
        started_at[rid] = now
        engine.submit(Sequence(rid, f"a{rid % adapters}", prompt, output, now))

    for _ in range(min(concurrency, requests)):
        issue()
    while latencies.__len__() < requests:
        result = engine.step()
        now += result.duration_s
        for rid in result.finished:
            latencies.append(now - started_at.pop(rid))
            if issued < requests:
                issue()
    latencies.sort()
    return {"mean_ms": 1000 * statistics.fmean(latencies), "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "req_per_s": requests / now, "tok_per_s": requests * output / now,
            "slot_swaps": engine.slot_swaps, "host_loads": engine.host_loads}


async def _live(params: PerfParams, concurrency: int, adapters: int, requests: int, output: int,
                speed: float) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="worker-profile-"))
    modules = [f"a{i}={make_adapter_dir(root, f'a{i}')}" for i in range(adapters)]
    proc = sim_worker(root, extra_args=("--max-loras", str(params.max_loras), "--speed", str(speed),
                                        "--lora-modules", *modules)).start()
    url = base_url(proc)
    latencies: list[float] = []
    counter = iter(range(requests))
    try:
        async with aiohttp.ClientSession() as session:
            async def client() -> None:
                for i in counter:
                    body = {"model": f"a{i % adapters}", "prompt": "x " * 8, "max_tokens": output, "ignore_eos": True}
                    t0 = time.monotonic()
                    async with session.post(url + "/v1/completions", json=body) as r:
                        await r.read()
                    latencies.append(time.monotonic() - t0)
            t0 = time.monotonic()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            wall = time.monotonic() - t0
    finally:
        proc.stop()
    return {"mean_ms": 1000 * statistics.fmean(latencies) / speed, "req_per_s": requests / wall * speed}


def run(args: argparse.Namespace) -> int:
    params = PerfParams(max_loras=args.max_loras, max_cpu_loras=2 * args.max_loras)
    rows = []
    print(f"simulated worker: max_loras={args.max_loras}, prompt {args.prompt_tokens} tokens, "
          f"output {args.output_tokens} tokens, {args.requests} requests per row (virtual time)")
    print(f"{'concurrency':>11} {'adapters':>8} {'mean ms':>9} {'p99 ms':>9} {'req/s':>8} {'tok/s':>8} "
          f"{'swaps':>6} {'disk':>5}")
    for concurrency in (1, 4, 16, 64):
        for adapters in (1, args.max_loras, 2 * args.max_loras):
            cell = simulate(params, concurrency, adapters, args.requests, args.prompt_tokens, args.output_tokens)
            rows.append({"concurrency": concurrency, "adapters": adapters, **cell})
            print(f"{concurrency:>11} {adapters:>8} {cell['mean_ms']:>9.0f} {cell['p99_ms']:>9.0f} "
                  f"{cell['req_per_s']:>8.1f} {cell['tok_per_s']:>8.0f} {cell['slot_swaps']:>6} "
                  f"{cell['host_loads']:>5}")
    if args.live:
        print(f"\nlive worker over HTTP (--speed {args.speed}; figures scaled back to speed 1):")
        for adapters in (1, 2 * args.max_loras):
            cell = asyncio.run(_live(params, 16, adapters, min(args.requests, 160), args.output_tokens, args.speed))
            model = simulate(PerfParams(max_loras=args.max_loras, max_cpu_loras=2 * args.max_loras), 16, adapters,
                             min(args.requests, 160), 8, args.output_tokens)
            rows.append({"live": True, "concurrency": 16, "adapters": adapters, **cell})
            print(f"  concurrency 16, {adapters:>2} adapters: live mean {cell['mean_ms']:.0f} ms, "
                  f"{cell['req_per_s']:.1f} req/s; model {model['mean_ms']:.0f} ms, {model['req_per_s']:.1f} req/s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))
    return 0
