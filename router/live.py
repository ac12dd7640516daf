"""The config in force, for every edge that reads a knob: swapped whole by a reload.

Readers ask it each time they need a value, never keep one, so a reload applies at the next request or
tick; a request in flight keeps the objects it already took, so a swap drops nothing.
"""

from __future__ import annotations

from router.auth import Authenticator
from router.config import LoadedConfig, RouterConfig


class LiveConfig:
    __slots__ = ("auth", "config", "loaded")

    def __init__(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.config: RouterConfig = loaded.config
        self.auth = Authenticator(loaded.config, loaded.secrets)

    def swap(self, loaded: LoadedConfig) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.auth = Authenticator(loaded.config, loaded.secrets)
