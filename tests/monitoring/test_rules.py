"""The alert rules: valid for Prometheus (`promtool check rules`), and doing what they say
(`promtool test rules` over tests/monitoring/rules_test.yaml). .ci/run installs promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "lora-router" / "files" / "prometheus-rules.yaml"
RULE_TESTS = Path(__file__).with_name("rules_test.yaml")
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("LORA_ROUTER_REQUIRE_PROMTOOL"),
    reason="promtool is not installed (apt-get install prometheus; .ci/run does, and sets "
           "LORA_ROUTER_REQUIRE_PROMTOOL so these fail there instead of skipping)")


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is required here (LORA_ROUTER_REQUIRE_PROMTOOL is set)"
    return subprocess.run([PROMTOOL, *map(str, args)], check=False, capture_output=True, text=True, timeout=60)


@needs_promtool
def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests bite: a no-leader alert that waits 20 minutes instead of 2 fails them."""
    broken = RULES.read_text().replace(
        "expr: max by (namespace) (lora_router_leader) < 1\n        for: 2m",
        "expr: max by (namespace) (lora_router_leader) < 1\n        for: 20m")
    assert broken != RULES.read_text()
    (tmp_path / "rules.yaml").write_text(broken)
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = ["rules.yaml"]
    (tmp_path / "rules_test.yaml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", tmp_path / "rules_test.yaml")
    assert result.returncode != 0
    assert "LoraRouterNoLeader" in result.stdout + result.stderr


def test_every_alert_the_issue_asks_for_is_there() -> None:
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert {"LoraRouterNoLeader", "LoraRouterEtcdUnreachable", "LoraRouterAdaptersUnplaced",
            "LoraRouterAdapterLoadsFailedPermanently", "LoraRouterWorkerEjected",
            "LoraRouterErrorBudgetBurnFast", "LoraRouterTTFBBudgetBurnFast"} <= alerts


def test_every_runbook_anchor_is_a_section_of_operations_md() -> None:
    """Alerts link to docs/operations.md#SECTION: each must be a heading there (GitHub's anchors)."""
    import re

    text = (ROOT / "docs" / "operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
    runbooks = {r["annotations"]["runbook"] for g in yaml.safe_load(RULES.read_text())["groups"]
                for r in g["rules"] if "runbook" in r.get("annotations", {})}
    assert runbooks
    for runbook in runbooks:
        page, _, anchor = runbook.partition("#")
        assert page == "docs/operations.md" and anchor in anchors, runbook
