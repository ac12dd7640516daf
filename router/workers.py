"""Calls from the router to a worker's admin surface: list, load, unload.

Answers are classified once, here, into outcomes the reconciler and the cold
start path act on: done (including vLLM's "already loaded" / "not found" that
mean the goal is met), a permanent rejection with its reason (bad path, rank
too high, unauthorized), or a transient failure worth retrying.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import msgspec

from router.core.records import AdapterRecord, adapter_path


class WorkerCallFailed(Exception):
    """Transient: the worker did not answer usefully; retry with backoff."""


class AdapterRejected(Exception):
    """Permanent for this worker: retrying the same call cannot succeed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class _ModelCard(msgspec.Struct):
    id: str
    parent: str | None = None


class _ModelList(msgspec.Struct):
    data: list[_ModelCard]


class _ErrorInner(msgspec.Struct):
    message: str = ""


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorInner | str | None = None
    message: str | None = None


def _auth(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def error_message(body: bytes) -> str:
    """The message of either vLLM error shape (nested or flat), or the raw text."""
    try:
        env = msgspec.json.decode(body, type=_ErrorEnvelope)
    except msgspec.DecodeError:
        return body.decode(errors="replace")[:500]
    if isinstance(env.error, _ErrorInner):
        return env.error.message
    return env.message or (env.error if isinstance(env.error, str) else "") or ""


Locate = Callable[[str, AdapterRecord, float], Awaitable[str]]


async def _source_path(base_url: str, adapter: AdapterRecord, wait_s: float) -> str:
    return adapter_path(adapter.source)


class WorkerClient:
    def __init__(self, session: aiohttp.ClientSession, api_key: str | None, timeout_s: float) -> None:
        self._session = session
        self._per_worker: dict[str, dict[str, str]] = {}
        self.locate: Locate = _source_path
        """(worker URL, adapter, seconds it may wait) -> the lora_path that worker loads; router.sources sets
        it to the worker's local copy of a remote source."""
        self.configure(api_key, timeout_s)

    def configure(self, api_key: str | None, timeout_s: float) -> None:
        """Take a reloaded config's key and timeout; calls already running keep the old ones."""
        self._headers = _auth(api_key)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def set_worker_keys(self, keys: dict[str, str]) -> None:
        """Keys for single workers (base URL -> key) that replace the global one for them."""
        self._per_worker = {url: _auth(key) for url, key in keys.items()}

    async def _call(self, method: str, base_url: str, path: str,
                    body: object | None = None) -> tuple[int, bytes]:
        url = base_url + path
        headers = self._per_worker.get(base_url, self._headers)
        try:
            async with self._session.request(method, url, json=body, headers=headers,
                                             timeout=self._timeout) as resp:
                return resp.status, await resp.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise WorkerCallFailed(f"{method} {url}: {type(exc).__name__}") from exc

    async def list_adapters(self, base_url: str) -> set[str]:
        status, body = await self._call("GET", base_url, "/v1/models")
        if status == 401:
            raise AdapterRejected("unauthorized", "the worker rejected the router's API key")
        if status != 200:
            raise WorkerCallFailed(f"GET {base_url}/v1/models: HTTP {status}")
        try:
            cards = msgspec.json.decode(body, type=_ModelList).data
        except msgspec.DecodeError as exc:
            raise WorkerCallFailed(f"GET {base_url}/v1/models: malformed body") from exc
        return {c.id for c in cards if c.parent is not None}

    async def load(self, base_url: str, adapter: AdapterRecord, inplace: bool = False, *,
                   wait_s: float = 0.0) -> None:
        """`inplace` re-points a name the worker already has at the record's (new) source; `wait_s` bounds
        the wait for a remote source's fetch beside the worker."""
        path = await self.locate(base_url, adapter, wait_s)
        body: dict[str, object] = {"lora_name": adapter.name, "lora_path": path}
        if inplace:
            body["load_inplace"] = True
        status, raw = await self._call("POST", base_url, "/v1/load_lora_adapter", body)
        if status == 200:
            return
        message = error_message(raw)
        if status == 400 and "already been loaded" in message:
            return
        raise _classify(status, message)

    async def unload(self, base_url: str, adapter: str) -> None:
        status, raw = await self._call("POST", base_url, "/v1/unload_lora_adapter", {"lora_name": adapter})
        if status in (200, 404):
            return
        raise _classify(status, error_message(raw))

    async def active_adapters(self, base_url: str) -> set[str]:
        """Adapters with requests running or waiting on the worker, from every router's traffic.

        A drain waits on this, not only on this router's own in-flight count,
        because other routers' requests on the same worker are invisible here.
        """
        status, body = await self._call("GET", base_url, "/metrics")
        if status != 200:
            raise WorkerCallFailed(f"GET {base_url}/metrics: HTTP {status}")
        return lora_activity(body.decode(errors="replace"))

    async def healthy(self, base_url: str) -> bool:
        try:
            status, _ = await self._call("GET", base_url, "/health")
        except WorkerCallFailed:
            return False
        return status == 200


_INFO = "vllm:lora_requests_info{"


def lora_activity(metrics_text: str) -> set[str]:
    """Running and waiting adapters from the newest `vllm:lora_requests_info` series.

    vLLM keeps old label sets in the output and stamps the current one with the
    largest value, so only that series counts.
    """
    newest: tuple[float, str] | None = None
    for line in metrics_text.splitlines():
        if line.startswith(_INFO):
            labels, _, value = line[len(_INFO):].rpartition("} ")
            try:
                stamp = float(value)
            except ValueError:
                continue
            if newest is None or stamp > newest[0]:
                newest = (stamp, labels)
    if newest is None:
        return set()
    active: set[str] = set()
    for part in newest[1].split('",'):
        key, _, raw = part.partition('="')
        if key.strip() in ("running_lora_adapters", "waiting_lora_adapters"):
            active.update(n for n in raw.rstrip('"').split(",") if n)
    return active


def _classify(status: int, message: str) -> Exception:
    if status == 401:
        return AdapterRejected("unauthorized", "the worker rejected the router's API key")
    if status == 404 and "No adapter found" in message:
        return AdapterRejected("not_found", message)
    if status == 404:
        return AdapterRejected("runtime_loading_disabled", "the worker has no runtime LoRA endpoints "
                               "(set VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)")
    if "max_lora_rank" in message or ("rank" in message.lower() and status == 500):
        return AdapterRejected("rank_too_high", message)
    if status == 400:
        return AdapterRejected("rejected", message)
    return WorkerCallFailed(f"HTTP {status}: {message[:200]}")
