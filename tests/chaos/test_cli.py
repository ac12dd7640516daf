"""`lora-bench chaos` itself: arguments, the table and the JSON it writes (no fleet needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.chaos.report import ScenarioResult, table, write_json
from bench.cli import main


def test_an_unknown_scenario_is_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chaos", "--scenario", "worker-kill,no-such"]) == 2
    assert "no-such" in capsys.readouterr().err


def test_the_table_marks_a_failed_check_and_the_json_keeps_every_figure(tmp_path: Path) -> None:
    ok = ScenarioResult(name="a", load="1 req/s", faults="none", sent=3, succeeded=3, checks={"fine": True},
                        recovery_s=1.25, recovery_of="back")
    bad = ScenarioResult(name="b", load="1 req/s", faults="f", sent=2, succeeded=1, failed=1,
                         checks={"fine": True, "broken": False}, figures={"p99 ms": None})
    text = table([ok, bad])
    assert "| a |" in text and "1.2 s (back)" in text and "1/1 pass |" in text
    assert "1/2 pass **FAIL**" in text and "| n/a |" in text
    write_json(tmp_path / "out.json", [ok, bad])
    data = json.loads((tmp_path / "out.json").read_text())
    assert [r["name"] for r in data] == ["a", "b"] and data[1]["checks"] == {"fine": True, "broken": False}
