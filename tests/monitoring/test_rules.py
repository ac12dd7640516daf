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


DASHBOARD = ROOT / "helm" / "lora-router" / "files" / "grafana-dashboard.json"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "$job": ".*", "$topk": "10"}


def dashboard_expressions() -> list[str]:
    import json

    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


@needs_promtool
def test_every_dashboard_expression_is_valid_promql(tmp_path: Path) -> None:
    """Each panel's query, with Grafana's variables filled in, parses as PromQL (as a recording rule)."""
    rules = []
    for i, expr in enumerate(dashboard_expressions()):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:panel_{i}", "expr": expr})
    (tmp_path / "dashboard-rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", tmp_path / "dashboard-rules.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_structure() -> None:
    """What Grafana's sidecar needs: a uid, unique panel ids, every query on the datasource variable,
    the template variables the queries use, panels that do not overlap."""
    import json

    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "lora-router" and dashboard["title"]
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "job", "topk"} <= variables
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"panel {panel['title']} overlaps another"
        cells |= mine
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'namespace=~"$namespace"' in target["expr"], f"{panel['title']} ignores the namespace"
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in ("error", "time to first byte", "cold start", "overflow", "replicas", "worker health",
                  "leader", "etcd", "tick", "reconcile", "tenant"):
        assert topic in titles, topic
