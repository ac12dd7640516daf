"""A retry budget: retries may add at most `ratio` of recent traffic, so a sick fleet sees no storm."""

from __future__ import annotations


class RetryBudget:
    __slots__ = ("cap", "ratio", "tokens")

    def __init__(self, ratio: float, cap: float = 20.0) -> None:
        self.ratio = ratio
        self.cap = cap
        self.tokens = cap

    def on_request(self) -> None:
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def may_spend(self) -> bool:
        """Read by the routing policy, which decides whether a retry happens; `spend` when it does."""
        return self.tokens >= 1.0

    def spend(self) -> None:
        self.tokens -= 1.0
