"""`lora-bench worker`: a simulated vLLM worker (vLLM's OpenAI server contract, a GPU performance model)."""

from __future__ import annotations

import argparse
import asyncio
import os

import uvloop
from aiohttp import web

from bench.worker.server import SimulatedWorker, WorkerOptions

HELP = ("Run a simulated vLLM worker: vLLM's OpenAI API and runtime-LoRA endpoints (when "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), timed by bench.perfmodel.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, required=True, help="port to listen on")
    p.add_argument("--model", required=True, help="served name of the base model")
    p.add_argument("--max-loras", type=int, default=1, help="distinct adapters in one batch: GPU slots (default 1)")
    p.add_argument("--max-cpu-loras", type=int, default=None,
                   help="host LRU of adapter weights (default: --max-loras)")
    p.add_argument("--max-lora-rank", type=int, default=16, help="highest adapter rank accepted (default 16)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="sequences in one batch (default 64)")
    p.add_argument("--max-model-len", type=int, default=4096,
                   help="context length: reported in /v1/models, longer prompts refused as vLLM does (default 4096)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on /v1/*; as vLLM, the VLLM_API_KEY environment "
                        "variable is used when this is not given (keeps the key out of the process table)")
    p.add_argument("--lora-modules", nargs="*", default=[], metavar="NAME=PATH",
                   help="adapters registered at start-up")
    p.add_argument("--speed", type=float, default=1.0,
                   help="multiplies every modelled cost (1 = GPU-like, 0.01 = fast tests, 0 = free)")
    p.add_argument("--fail-rate", type=float, default=0.0,
                   help="fraction of inference requests answered with a 500 (fault injection)")
    p.add_argument("--slow-s", type=float, default=0.0, help="extra delay before each inference answer")
    p.add_argument("--early-hints", action="store_true",
                   help="send an interim 103 Early Hints before each inference answer (fault injection)")
    p.add_argument("--cut-rate", type=float, default=0.0,
                   help="fraction of inference answers cut in the middle of the body (fault injection)")
    p.add_argument("--die-after-tokens", type=int, default=0, metavar="K",
                   help="SIGKILL the worker itself once it has produced K tokens, all answers together (a "
                        "stream: once the chunk of the K-th token is written): an answer cut after at most K tokens "
                        "(fault injection; 0 = never)")
    p.add_argument("--seed", type=int, default=0, help="seed for fault injection")


def run(args: argparse.Namespace) -> int:
    modules = dict(_pair(m) for m in args.lora_modules)
    options = WorkerOptions(model=args.model, max_loras=args.max_loras, max_cpu_loras=args.max_cpu_loras,
                            max_lora_rank=args.max_lora_rank, max_num_seqs=args.max_num_seqs,
                            max_model_len=args.max_model_len,
                            api_key=args.api_key or os.environ.get("VLLM_API_KEY") or None, lora_modules=modules,
                            speed=args.speed, fail_rate=args.fail_rate, slow_s=args.slow_s,
                            early_hints=args.early_hints, cut_rate=args.cut_rate,
                            die_after_tokens=args.die_after_tokens, seed=args.seed)
    worker = SimulatedWorker(options)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(worker, args.host, args.port))
    return 0


async def _serve(worker: SimulatedWorker, host: str, port: int) -> None:
    runner = web.AppRunner(worker.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def _pair(item: str) -> tuple[str, str]:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
        raise SystemExit(f"--lora-modules expects NAME=PATH, got {item!r}")
    return name, path
