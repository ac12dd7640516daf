"""`lora-bench proxy`: CPU per request and latency of lora-router vs nginx vs vllm-router, in one run."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import msgspec

from bench.proxybench.measure import Sample, load_tool, measure
from bench.proxybench.pinning import choose_cores
from bench.proxybench.report import medians, table
from bench.proxybench.targets import DEFAULT_TARGETS, TARGETS, Targets

HELP = ("Same load direct to a simulated worker, through lora-router, nginx and vllm-router (when "
        "installed); proxy pinned to one core; prints req/s, p50/p99 and the proxy's CPU per request.")

MODES = ("plain", "stream", "long")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=int, default=3, help="length of one measurement in seconds (default 3)")
    p.add_argument("--reps", type=int, default=3,
                   help="repetitions, target order rotated each time; medians reported (default 3)")
    p.add_argument("--concurrency", default="64,1", help="comma-separated connection counts (default 64,1)")
    p.add_argument("--modes", default="plain,stream",
                   help="comma-separated: plain (non-streaming), stream, long (non-streaming, an 8 KiB prompt that "
                   "prefix-cache-aware picking hashes) (default plain,stream)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated subset of {','.join(TARGETS)}; missing proxies are skipped; "
                   "lora-router-noprefix is lora-router with prefix-cache-aware picking off "
                   f"(default {','.join(DEFAULT_TARGETS)})")
    p.add_argument("--load-generator", choices=("auto", "wrk", "python"), default="auto",
                   help="wrk, or the built-in Python generator (auto: wrk when installed)")
    p.add_argument("--quick", action="store_true", help="1-second runs, one repetition: a smoke test")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--json", dest="json_out", default=None, help="write every sample and the medians here")


def run(args: argparse.Namespace) -> int:
    seconds, reps = (1, 1) if args.quick else (args.seconds, args.reps)
    wanted, modes = _csv(args.targets), _csv(args.modes)
    concurrency = [int(c) for c in _csv(args.concurrency)]
    bad = [t for t in wanted if t not in TARGETS] + [m for m in modes if m not in MODES]
    if bad or seconds < 1 or reps < 1 or not concurrency or min(concurrency) < 1:
        print(f"lora-bench proxy: bad arguments {bad or ''} (targets {TARGETS}, modes {MODES}, "
              "seconds/reps/concurrency >= 1)", file=sys.stderr)
        return 2
    tool = load_tool() if args.load_generator == "auto" else args.load_generator
    cores = choose_cores()
    workdir = Path(tempfile.mkdtemp(prefix="lora-bench-proxy-"))
    targets = Targets(workdir, cores)
    samples: list[Sample] = []
    try:
        targets.start(wanted)
        order = [t for t in wanted if t in targets.started]
        _preamble(targets.notes, tool, cores.proxy, cores.load, len(order) * len(modes) * len(concurrency) * reps,
                  seconds)
        for rep in range(reps):
            rotated = order[rep % len(order):] + order[:rep % len(order)]
            for mode in modes:
                for conc in concurrency:
                    for name in rotated:
                        sample = measure(targets.started[name], mode, conc, seconds, tool=tool,
                                         core=cores.load, workdir=workdir)
                        samples.append(sample)
                        print(f"  rep {rep + 1}/{reps} {mode:<6} c={conc:<3} {name:<12} "
                              f"{sample.load.rps:8.0f} req/s", file=sys.stderr)
    except BaseException:
        print(f"lora-bench proxy failed; logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        targets.stop()
    shutil.rmtree(workdir, ignore_errors=True)
    rows = medians(samples)
    print(table(rows, markdown=args.markdown))
    if any(r.errors for r in rows):
        print("warning: some targets answered errors (see the errors column); their figures are suspect")
    if args.json_out:
        Path(args.json_out).write_bytes(msgspec.json.format(msgspec.json.encode(
            {"load_generator": tool, "seconds": seconds, "reps": reps, "proxy_core": cores.proxy,
             "load_core": cores.load, "notes": targets.notes, "samples": samples, "medians": rows}), indent=2))
    return 0


def _preamble(notes: list[str], tool: str, proxy_core: int | None, load_core: int | None, runs: int,
              seconds: int) -> None:
    for note in notes:
        print(note)
    pinning = (f"proxy on core {proxy_core}, worker and {tool} on core {load_core}" if proxy_core is not None
               else "fewer than two usable cores: nothing pinned")
    print(f"load generator {tool}; {pinning}; {runs} runs of {seconds}s", file=sys.stderr)
