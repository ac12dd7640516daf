"""One measurement: a load run against one target, with the CPU its process tree spent meanwhile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import msgspec

from bench.proxybench.cputime import tree_cpu_s
from bench.proxybench.load import PATH, LoadResult, request_body
from bench.proxybench.pinning import pinned
from bench.proxybench.pyload import pyload_argv
from bench.proxybench.targets import Target
from bench.proxybench.wrk import lua_script, parse_wrk, wrk_argv


class Sample(msgspec.Struct):
    target: str
    mode: str
    """plain, stream or long (bench.proxybench.load.request_body)."""
    concurrency: int
    load: LoadResult
    cpu_us_per_request: float | None
    """The proxy tree's user+sys CPU over the run / requests completed; None for direct."""


class LoadGeneratorFailed(RuntimeError):
    """The load generator exited with an error."""


def load_tool() -> str:
    return "wrk" if shutil.which("wrk") else "python"


def measure(target: Target, mode: str, concurrency: int, seconds: int, *, tool: str, core: int | None,
            workdir: Path) -> Sample:
    body = request_body(mode)
    url = target.url + PATH
    if tool == "wrk":
        argv = wrk_argv(url, lua_script(workdir / f"{mode}.lua", body), concurrency, seconds)
    else:
        body_file = workdir / f"{mode}.json"
        body_file.write_bytes(body)
        argv = pyload_argv(url, body_file, concurrency, seconds)
    before = tree_cpu_s(target.pid) if target.pid else 0.0
    done = subprocess.run(pinned(argv, core), capture_output=True, text=True, check=False)
    cpu = tree_cpu_s(target.pid) - before if target.pid else None
    if done.returncode != 0:
        raise LoadGeneratorFailed(f"{argv[0]} exited with {done.returncode}: {done.stderr[-500:]}")
    load = parse_wrk(done.stdout) if tool == "wrk" else msgspec.json.decode(done.stdout, type=LoadResult)
    return Sample(target=target.name, mode=mode, concurrency=concurrency, load=load,
                  cpu_us_per_request=None if cpu is None else 1e6 * cpu / max(load.requests, 1))
