"""Run scenarios one after another, each in its own directory, kept only when it failed.

A fleet that never gets ready is that scenario's failed check, not the end of the run.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.chaos.report import ScenarioResult
from bench.chaos.scenarios import SCENARIOS
from bench.chaos.scenarios.common import Context, NotConverged
from discovery.embedded import EtcdStartFailed
from router.procs import ProcessStartFailed


async def run_scenarios(names: Sequence[str], *, quick: bool, soak_minutes: float,
                        workdir: Path | None = None) -> list[ScenarioResult]:
    results = []
    for name in names:
        root = Path(tempfile.mkdtemp(prefix=f"chaos-{name}-", dir=workdir))
        print(f"chaos: {name} ({'quick' if quick else 'full'}) in {root}", file=sys.stderr)
        try:
            result = await SCENARIOS[name](Context(root=root, quick=quick, soak_minutes=soak_minutes))
        except (NotConverged, ProcessStartFailed, EtcdStartFailed) as exc:
            result = ScenarioResult(name=name, load="", faults="none (the fleet never got ready)",
                                    checks={"fleet ready before the fault": False}, samples=[str(exc)])
        results.append(result)
        print(f"chaos: {name}: {'pass' if result.passed else 'FAIL (logs kept)'}", file=sys.stderr)
        if result.passed:
            shutil.rmtree(root, ignore_errors=True)
    return results
