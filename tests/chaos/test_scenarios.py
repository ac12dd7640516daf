"""The quick chaos scenarios, through the same engine as `lora-bench chaos --quick`, one test each.

Each scenario checks its own properties (see its module docstring); a test
fails with every failed check, the figures and the first failures verbatim.
The soak runs here for 45 s (and churns faster); `lora-bench chaos --scenario
soak` runs it for 10 minutes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos.engine import run_scenarios
from bench.chaos.scenarios import DEFAULT


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", [*DEFAULT, "soak"])
async def test_scenario(name: str, tmp_path: Path) -> None:
    [result] = await run_scenarios([name], quick=True, soak_minutes=0.75, workdir=tmp_path)
    assert result.passed, result.explain()
