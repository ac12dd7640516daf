"""What a scenario found, as one row of the chaos table and as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import msgspec

from bench.chaos.load import Outcome, Tally
from bench.chaos.observe import Usage


class Counters(msgspec.Struct, frozen=True):
    """What the routers did about failed tries: retried a request, continued a cut stream elsewhere."""

    retried: float = 0.0
    migrated: float = 0.0

    def __sub__(self, other: Counters) -> Counters:
        return Counters(self.retried - other.retried, self.migrated - other.migrated)


class ScenarioResult(msgspec.Struct, kw_only=True):
    name: str
    load: str
    """Rate, duration, fleet size: what the client did."""
    faults: str
    """What was broken, and when."""
    sent: int = 0
    succeeded: int = 0
    retried: int = 0
    """Router-side retries on another worker (from the routers' lora_router_retries_total)."""
    migrated: int = 0
    """Streams a dead worker cut mid-way that the routers continued on another worker (from their
    lora_router_migrations_total{outcome="continued"})."""
    failed: int = 0
    """Errors, hangs and wrong answers the client saw, cut streams excluded."""
    cut_streams: int = 0
    """Streams a dead worker cut mid-way and not migrated: ended with an SSE error event."""
    recovery_s: float | None = None
    recovery_of: str = ""
    checks: dict[str, bool] = {}
    figures: dict[str, float | None] = {}
    samples: list[str] = []
    """The first few failures verbatim, and anything else worth reading when a check fails."""
    usage: list[Usage] = []
    """The router's footprint over time, where a scenario watches it (the soak)."""

    def count(self, tally: Tally, counters: Counters) -> None:
        self.sent = tally.sent
        self.succeeded = tally.count(Outcome.OK)
        self.failed = tally.count(Outcome.FAILED) + tally.count(Outcome.HUNG) + tally.count(Outcome.WRONG)
        self.cut_streams = tally.count(Outcome.CUT)
        self.retried = int(counters.retried)
        self.migrated = int(counters.migrated)
        self.samples.extend(tally.failures)
        self.checks["every error answer in OpenAI's shape"] = tally.unshaped_errors == 0
        self.checks["every streamed answer is its reference text (no token lost or repeated)"] = \
            tally.count(Outcome.WRONG) == 0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def explain(self) -> str:
        failing = [name for name, ok in self.checks.items() if not ok]
        return (f"{self.name}: failed checks {failing}; figures {self.figures}; recovery {self.recovery_s}; "
                f"sent {self.sent} ok {self.succeeded} failed {self.failed} cut {self.cut_streams}; "
                f"samples {self.samples}")


def _recovery(r: ScenarioResult) -> str:
    if not r.recovery_of:
        return "n/a"
    value = "never" if r.recovery_s is None else f"{r.recovery_s:.1f} s"
    return f"{value} ({r.recovery_of})"


def table(results: Sequence[ScenarioResult]) -> str:
    """Markdown, so the same text goes to the terminal and into docs/reliability.md."""
    head = ("| scenario | load | faults injected | sent | succeeded | retried | streams migrated | failed "
            "| streams cut (SSE error) | recovery | checks |")
    rows = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        passed = sum(r.checks.values())
        verdict = f"{passed}/{len(r.checks)} pass" + ("" if r.passed else " **FAIL**")
        rows.append(f"| {r.name} | {r.load} | {r.faults} | {r.sent:,} | {r.succeeded:,} | {r.retried:,} "
                    f"| {r.migrated:,} | {r.failed:,} | {r.cut_streams:,} | {_recovery(r)} | {verdict} |")
    return "\n".join(rows)


def details(results: Sequence[ScenarioResult]) -> str:
    """Each scenario's checks and figures, one line each, for the terminal."""
    lines = []
    for r in results:
        lines.append(f"{r.name}:")
        lines.extend(f"  [{'ok' if ok else 'FAIL'}] {name}" for name, ok in r.checks.items())
        if r.figures:
            lines.append("  " + ", ".join(f"{k} {_figure(v)}" for k, v in r.figures.items()))
        if not r.passed:
            lines.extend(f"  sample: {s}" for s in r.samples)
    return "\n".join(lines)


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def write_json(path: str | Path, results: Sequence[ScenarioResult]) -> None:
    Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(list(results)), indent=2))
