"""`lora-bench proxy`: CPU per request and latency of lora-router vs nginx vs vllm-router, in one run."""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

import msgspec

from bench.proxybench import Bench, Sample

HELP = ("Same wrk load direct to a simulated worker, through lora-router, nginx and vllm-router (when "
        "installed); proxy pinned to core 0; prints req/s, p50/p99 and the proxy's CPU per request.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=int, default=5, help="length of one measurement (default 5)")
    p.add_argument("--reps", type=int, default=3, help="alternating repetitions; medians reported (default 3)")
    p.add_argument("--concurrency", default="64,1", help="comma-separated connection counts (default 64,1)")
    p.add_argument("--targets", default="direct,lora-router,nginx,vllm-router",
                   help="which targets to measure (default all that are installed)")
    p.add_argument("--json", dest="json_out", default=None, help="write every sample and the medians here")


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("lora-bench proxy needs wrk and taskset (Debian packages wrk, util-linux)")
        return 2
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    bench = Bench()
    samples: list[Sample] = []
    try:
        bench.start(wanted)
        for note in bench.notes:
            print(note)
        targets = [t for t in wanted if t in bench.targets]
        for rep in range(args.reps):
            order = targets[rep % len(targets):] + targets[:rep % len(targets)]
            for stream in (False, True):
                for concurrency in (int(c) for c in args.concurrency.split(",")):
                    for target in order:
                        samples.append(bench.measure(target, stream, concurrency, args.seconds))
    finally:
        bench.stop()
    medians = _medians(samples)
    _print(medians)
    if args.json_out:
        Path(args.json_out).write_bytes(msgspec.json.format(msgspec.json.encode(
            {"samples": samples, "medians": medians}), indent=2))
    return 0


def _medians(samples: list[Sample]) -> list[Sample]:
    groups: dict[tuple[str, str, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.target, s.mode, s.concurrency), []).append(s)
    return [Sample(target=t, mode=m, concurrency=c, requests=int(statistics.median(x.requests for x in g)),
                   rps=statistics.median(x.rps for x in g), p50_ms=statistics.median(x.p50_ms for x in g),
                   p99_ms=statistics.median(x.p99_ms for x in g),
                   cpu_us_per_request=statistics.median(x.cpu_us_per_request for x in g))
            for (t, m, c), g in groups.items()]


def _print(medians: list[Sample]) -> None:
    by_key = {(s.target, s.mode, s.concurrency): s for s in medians}
    print(f"{'mode':<7}{'conc':>5} {'target':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}"
          f"{'x nginx':>9}{'x vllm-r':>9}")
    for s in sorted(medians, key=lambda s: (s.mode, -s.concurrency, s.target)):
        ratios = []
        for ref in ("nginx", "vllm-router"):
            other = by_key.get((ref, s.mode, s.concurrency))
            ok = other is not None and s.target != "direct" and other.cpu_us_per_request > 0
            ratios.append(f"{s.cpu_us_per_request / other.cpu_us_per_request:.2f}" if ok else "-")
        cpu = f"{s.cpu_us_per_request:.0f}" if s.target != "direct" else "-"
        print(f"{s.mode:<7}{s.concurrency:>5} {s.target:<12}{s.rps:>9.0f}{s.p50_ms:>9.2f}{s.p99_ms:>9.2f}"
              f"{cpu:>12}{ratios[0]:>9}{ratios[1]:>9}")
