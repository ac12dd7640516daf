"""The worker's adapter registry, with vLLM's answers for every way a load or unload can go."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec


class Registered(msgspec.Struct):
    name: str
    path: str
    rank: int
    created: int
    int_id: int
    """vLLM's lora_int_id: numbered from 1 in load order, kept by an in-place reload."""


class RegistryError(Exception):
    def __init__(self, status: int, message: str, type_: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param


class AdapterRegistry:
    def __init__(self, max_lora_rank: int, base_model: str) -> None:
        self.max_lora_rank = max_lora_rank
        self.base_model = base_model
        self.adapters: dict[str, Registered] = {}
        self._last_id = 0

    def check(self, name: str, path: str, inplace: bool) -> int:
        """Validate a load without changing anything; returns the adapter's rank."""
        if name == self.base_model:
            raise RegistryError(400, f"The lora adapter name '{name}' conflicts with a served base model.",
                                "InvalidUserInput")
        if name in self.adapters and not inplace:
            raise RegistryError(
                400, f"The lora adapter '{name}' has already been loaded. If you want to load the adapter "
                "in place, set 'load_inplace' to True.", "InvalidUserInput")
        config = Path(path) / "adapter_config.json"
        try:
            rank = int(json.loads(config.read_text()).get("r", 8))
        except (OSError, ValueError):
            raise RegistryError(404, f"Loading lora {name} failed: No adapter found for <path>",
                                "NotFoundError") from None
        if rank > self.max_lora_rank:
            raise RegistryError(500, f"LoRA rank {rank} is greater than max_lora_rank {self.max_lora_rank}.",
                                "InternalServerError")
        return rank

    def add(self, name: str, path: str, rank: int, created: int) -> None:
        known = self.adapters.get(name)
        if known is None:
            self._last_id += 1
        int_id = known.int_id if known is not None else self._last_id
        self.adapters[name] = Registered(name=name, path=path, rank=rank, created=created, int_id=int_id)

    def remove(self, name: str, int_id: int | None = None) -> None:
        """vLLM refuses an unload whose lora_int_id names another registration (vLLM PR #43778)."""
        known = self.adapters.get(name)
        if known is None:
            raise RegistryError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        if int_id is not None and int_id != known.int_id:
            raise RegistryError(400, f"The requested lora_int_id {int_id} does not match loaded adapter '{name}' "
                                f"with id {known.int_id}.", "BadRequestError", "lora_int_id")
        del self.adapters[name]
