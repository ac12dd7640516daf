"""Medians over repetitions, compared with nginx and vllm-router, as a text or Markdown table."""

from __future__ import annotations

import math
import statistics

import msgspec

from bench.proxybench.measure import Sample

REFERENCES = ("nginx", "vllm-router")


class Row(msgspec.Struct):
    target: str
    mode: str
    concurrency: int
    reps: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    added_p50_ms: float | None
    """p50 through this proxy minus p50 direct to the worker."""
    cpu_us_per_request: float | None
    cpu_ratio: dict[str, float]
    """CPU per request / the reference proxy's, for each reference measured."""


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else float("nan")


def medians(samples: list[Sample]) -> list[Row]:
    groups: dict[tuple[str, str, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.target, s.mode, s.concurrency), []).append(s)
    cpu = {k: _median([s.cpu_us_per_request for s in g if s.cpu_us_per_request is not None]) if k[0] != "direct"
           else None for k, g in groups.items()}
    p50 = {k: _median([s.load.p50_ms for s in g]) for k, g in groups.items()}
    rows = []
    for (target, mode, conc), group in groups.items():
        mine = cpu[(target, mode, conc)]
        direct = p50.get(("direct", mode, conc))
        ratios = {ref: mine / theirs for ref in REFERENCES
                  if mine is not None and (theirs := cpu.get((ref, mode, conc))) and theirs > 0}
        rows.append(Row(
            target=target, mode=mode, concurrency=conc, reps=len(group),
            requests=int(statistics.median(s.load.requests for s in group)),
            errors=sum(s.load.errors for s in group), rps=_median([s.load.rps for s in group]),
            p50_ms=p50[(target, mode, conc)], p99_ms=_median([s.load.p99_ms for s in group]),
            added_p50_ms=None if target == "direct" or direct is None else p50[(target, mode, conc)] - direct,
            cpu_us_per_request=mine, cpu_ratio=ratios))
    order = {"plain": 0, "stream": 1, "long": 2}
    return sorted(rows, key=lambda r: (order.get(r.mode, 2), r.mode, -r.concurrency, r.target))


HEADER = ("mode", "conc", "target", "req/s", "p50 ms", "p99 ms", "+p50 ms", "CPU µs/req", "× nginx",
          "× vllm-router", "errors")


def _cells(row: Row) -> tuple[str, ...]:
    def opt(value: float | None, fmt: str) -> str:
        return "–" if value is None or math.isnan(value) else format(value, fmt)

    return (row.mode, str(row.concurrency), row.target, f"{row.rps:.0f}", opt(row.p50_ms, ".2f"),
            opt(row.p99_ms, ".2f"), opt(row.added_p50_ms, "+.2f"), opt(row.cpu_us_per_request, ".0f"),
            *(opt(row.cpu_ratio.get(ref), ".2f") for ref in REFERENCES), str(row.errors))


def table(rows: list[Row], markdown: bool = False) -> str:
    lines = [_cells(r) for r in rows]
    if markdown:
        out = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        return "\n".join(out + ["| " + " | ".join(cells) + " |" for cells in lines])
    widths = [max([len(h), *(len(c[i]) for c in lines)]) for i, h in enumerate(HEADER)]
    left = {0, 2}
    return "\n".join("  ".join(c.ljust(w) if i in left else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
                     for cells in [HEADER, *lines])
