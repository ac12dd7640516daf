"""The chart's monitoring objects carry the repository's one rule file and one dashboard, unchanged."""

from __future__ import annotations

import json

import pytest
import yaml

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed: pip install -e '.[helm]'")

from helmchart import CHART, FULLNAME, find, kinds, render, scenarios

ROOT = CHART.parents[1]
RULES = CHART / "files" / "prometheus-rules.yaml"


def test_prometheus_rule_is_the_rule_file() -> None:
    rule = find(render(scenarios()["production"]), "PrometheusRule", FULLNAME)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_docs_copies_are_the_chart_files() -> None:
    """docs/ links to the chart's files: one source (helm's .Files.Get reads only inside the chart)."""
    assert (ROOT / "docs" / "prometheus-rules.yaml").resolve() == RULES
    assert (ROOT / "docs" / "grafana-dashboard.json").resolve() == CHART / "files" / "grafana-dashboard.json"


def test_dashboard_configmap_for_the_grafana_sidecar() -> None:
    config_map = find(render(scenarios()["production"]), "ConfigMap", f"{FULLNAME}-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    [(name, text)] = config_map["data"].items()
    assert name.endswith(".json")
    assert json.loads(text) == json.loads((CHART / "files" / "grafana-dashboard.json").read_text())


def test_monitoring_objects_off_by_default() -> None:
    manifests = render(None)
    assert "PrometheusRule" not in kinds(manifests)
    assert not [m for m in manifests if m["metadata"]["name"] == f"{FULLNAME}-dashboard"]
