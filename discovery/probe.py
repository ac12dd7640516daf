"""What a vLLM worker says about itself over HTTP: healthy?, base model(s), max_lora, process start time.

Used by the registrar (before registering, and to notice a restart) and by
static discovery. The worker's API key, when given, goes in the Authorization
header and nowhere else: never into logs, errors or records.
"""

from __future__ import annotations

import re

import aiohttp
import msgspec

from discovery.errors import WorkerNotVllm, WorkerUnreachable

LORA_INFO = re.compile(r'^vllm:lora_requests_info\{[^}]*max_lora="(\d+)"', re.MULTILINE)
START_TIME = re.compile(r"^process_start_time_seconds(?:\{[^}]*\})?\s+([0-9.eE+]+)", re.MULTILINE)


class ModelEntry(msgspec.Struct):
    id: str
    parent: str | None = None


class ModelList(msgspec.Struct):
    data: list[ModelEntry]


class WorkerFacts(msgspec.Struct, frozen=True, kw_only=True):
    base_models: tuple[str, ...]
    max_loras: int | None = None
    start_time: float | None = None
    """The worker process's start time (Prometheus process_start_time_seconds), when it exports one."""


def parse_metrics(text: str) -> tuple[int | None, float | None]:
    """(max_lora, process start time) from a Prometheus text page; None for whatever is absent."""
    lora = LORA_INFO.search(text)
    start = START_TIME.search(text)
    return (int(lora.group(1)) if lora else None, float(start.group(1)) if start else None)


class WorkerProbe:
    """HTTP questions to one worker; each call raises WorkerUnreachable / WorkerNotVllm or answers."""

    def __init__(self, session: aiohttp.ClientSession, url: str, api_key: str | None = None,
                 timeout_s: float = 3.0) -> None:
        self.url = url.rstrip("/")
        self._session = session
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _get(self, path: str) -> bytes:
        try:
            async with self._session.get(self.url + path, headers=self._headers, timeout=self._timeout) as r:
                body = await r.read()
                if r.status != 200:
                    raise WorkerUnreachable(f"{self.url}{path} answered HTTP {r.status}")
                return body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise WorkerUnreachable(f"{self.url}{path}: {type(exc).__name__}: {exc}") from None

    async def healthy(self) -> bool:
        try:
            await self._get("/health")
        except WorkerUnreachable:
            return False
        return True

    async def base_models(self) -> tuple[str, ...]:
        """Models with no parent in /v1/models: the base model(s), not the LoRA adapters listed beside them."""
        try:
            listing = msgspec.json.decode(await self._get("/v1/models"), type=ModelList)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise WorkerNotVllm(f"{self.url}/v1/models is not an OpenAI model list: {exc}") from None
        bases = tuple(sorted(m.id for m in listing.data if m.parent is None))
        if not bases:
            raise WorkerNotVllm(f"{self.url}/v1/models lists no base model")
        return bases

    async def adapters(self) -> set[str]:
        """The LoRA adapters the worker holds now (entries of /v1/models with a parent)."""
        try:
            listing = msgspec.json.decode(await self._get("/v1/models"), type=ModelList)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise WorkerNotVllm(f"{self.url}/v1/models is not an OpenAI model list: {exc}") from None
        return {m.id for m in listing.data if m.parent is not None}

    async def metrics(self) -> tuple[int | None, float | None]:
        """(max_lora, start time) from /metrics; (None, None) when the worker has no metrics page."""
        try:
            return parse_metrics((await self._get("/metrics")).decode(errors="replace"))
        except WorkerUnreachable:
            return None, None

    async def facts(self) -> WorkerFacts:
        bases = await self.base_models()
        max_loras, start_time = await self.metrics()
        if max_loras is None and await self._warm_up(bases[0]):
            max_loras, start_time = await self.metrics()
        return WorkerFacts(base_models=bases, max_loras=max_loras, start_time=start_time)

    async def _warm_up(self, base: str) -> bool:
        """One 1-token request to the base model: vLLM publishes max_lora only once its engine has run.

        Returns whether the worker answered; a worker that cannot is registered without max_lora.
        """
        body = {"model": base, "prompt": "ping", "max_tokens": 1}
        try:
            async with self._session.post(self.url + "/v1/completions", json=body, headers=self._headers,
                                          timeout=self._timeout) as r:
                await r.read()
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
