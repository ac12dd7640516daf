"""A closed-loop HTTP load generator for machines without wrk: N keep-alive connections, each
sending the next request as soon as the previous answer has ended.

It uses the router's own lean HTTP/1.1 client, so it costs little more CPU per
request than wrk does; it runs as its own process, pinned like wrk, and prints
one JSON `LoadResult`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import uvloop

from bench.proxybench.load import LoadResult, percentile_ms
from router.upstream import UpstreamError, UpstreamPool


async def drive(url: str, body: bytes, concurrency: int, seconds: float) -> LoadResult:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    pool = UpstreamPool(connect_timeout=5.0, read_timeout=30.0)
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def connection() -> None:
        nonlocal errors
        while (sent := time.monotonic()) < stop_at:
            try:
                response = await pool.request(host, port, False, head, body)
                async for _ in response.iter_chunks():
                    pass
                response.release()
            except UpstreamError:
                errors += 1
                continue
            latencies.append(time.monotonic() - sent)
            errors += response.status >= 300

    started = time.monotonic()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    pool.close()
    latencies.sort()
    return LoadResult(requests=len(latencies), errors=errors, seconds=elapsed, rps=len(latencies) / elapsed,
                      p50_ms=percentile_ms(latencies, 0.50), p99_ms=percentile_ms(latencies, 0.99))


def pyload_argv(url: str, body_file: Path, concurrency: int, seconds: float) -> list[str]:
    return [sys.executable, "-m", "bench.proxybench.pyload", url, str(body_file), str(concurrency), str(seconds)]


def main() -> None:
    p = argparse.ArgumentParser(description="closed-loop POST load; prints one JSON LoadResult")
    p.add_argument("url", help="full URL to POST to")
    p.add_argument("body_file", help="file holding the request body")
    p.add_argument("concurrency", type=int, help="connections, each with one request in flight")
    p.add_argument("seconds", type=float, help="how long to keep sending")
    args = p.parse_args()
    body = Path(args.body_file).read_bytes()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(drive(args.url, body, args.concurrency, args.seconds))
    sys.stdout.buffer.write(msgspec.json.encode(result))


if __name__ == "__main__":
    main()
