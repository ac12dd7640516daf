"""Discovery test helpers: an async poll with a deadline, and stand-in vLLM workers.

Most tests run real `lora-bench worker` processes. The stand-in (/health,
/v1/models, /metrics) is for what those cannot give: fifty workers behind one
socket (path prefixes, http://127.0.0.1:P/w7) for the scale test, and a
Prometheus `process_start_time_seconds` (real vLLM exports it, the simulator
does not) for restart detection. Each worker's health and start time can be
changed by the test.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from discovery.ports import free_port
from router.waiting import wait_until_async


class FakeWorker:
    def __init__(self, base_model: str, max_lora: int) -> None:
        self.base_model = base_model
        self.max_lora = max_lora
        self.healthy = True
        self.start_time = time.time()

    def restart(self) -> None:
        self.start_time += 1.0


class FakeFleet:
    def __init__(self) -> None:
        self.workers: dict[str, FakeWorker] = {}
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    def add(self, name: str, base_model: str = "sim-base", max_lora: int = 4) -> str:
        self.workers[name] = FakeWorker(base_model, max_lora)
        return self.url(name)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def start(self) -> FakeFleet:
        app = web.Application()
        app.router.add_get("/{name}/health", self._health)
        app.router.add_get("/{name}/v1/models", self._models)
        app.router.add_get("/{name}/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _worker(self, request: web.Request) -> FakeWorker:
        worker = self.workers.get(request.match_info["name"])
        if worker is None:
            raise web.HTTPNotFound()
        return worker

    async def _health(self, request: web.Request) -> web.Response:
        worker = self._worker(request)
        return web.Response(status=200 if worker.healthy else 503)

    async def _models(self, request: web.Request) -> web.Response:
        worker = self._worker(request)
        return web.json_response({"object": "list", "data": [
            {"id": worker.base_model, "object": "model", "parent": None},
            {"id": "some-lora", "object": "model", "parent": worker.base_model}]})

    async def _metrics(self, request: web.Request) -> web.Response:
        worker = self._worker(request)
        text = (f'vllm:lora_requests_info{{max_lora="{worker.max_lora}",running_lora_adapters="",'
                f'waiting_lora_adapters=""}} 1.0\nprocess_start_time_seconds {worker.start_time}\n')
        return web.Response(text=text)


async def until(predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.02) -> object:
    """`router.waiting.wait_until_async` (sync or async predicate) with the positional arguments of the callers here."""
    return await wait_until_async(predicate, timeout_s=timeout_s, what=what, interval_s=interval_s)
