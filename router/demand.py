"""Per-adapter demand counted on the request path: O(1) dict updates on the event loop."""

from __future__ import annotations


class DemandCounter:
    """Arrivals since the last tick and requests in flight, per adapter."""

    __slots__ = ("arrivals", "inflight")

    def __init__(self) -> None:
        self.arrivals: dict[str, int] = {}
        self.inflight: dict[str, int] = {}

    def started(self, adapter: str) -> None:
        self.arrivals[adapter] = self.arrivals.get(adapter, 0) + 1
        self.inflight[adapter] = self.inflight.get(adapter, 0) + 1

    def finished(self, adapter: str) -> None:
        left = self.inflight[adapter] - 1
        if left:
            self.inflight[adapter] = left
        else:
            del self.inflight[adapter]

    def take_arrivals(self) -> dict[str, int]:
        """Arrivals since the previous call; the tick turns them into a rate."""
        taken, self.arrivals = self.arrivals, {}
        return taken
