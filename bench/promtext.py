"""Reading numbers out of Prometheus text: the benchmarks learn what the processes counted themselves."""

from __future__ import annotations


def metric_sum(text: str, name: str, where: str = "") -> float:
    """The sum of the samples of one metric whose labels contain `where` (all if empty); 0 when absent."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " ") and where in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
