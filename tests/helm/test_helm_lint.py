"""`helm lint --strict` and values.schema.json, through helm-python-sdk (offline)."""

from __future__ import annotations

from typing import Any

import pytest

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed: pip install -e '.[helm]'")

from helmchart import CHART, PRODUCTION_VALUES, load_values, render

KUBE_VERSIONS = ["v1.28.0", "v1.31.0"]
WARNING = 2
"""--strict fails on warnings too."""


def lint_errors(values: dict[str, Any] | None, kube_version: str) -> list[str]:
    report = helm.lint(CHART, values, strict=True, kube_version=kube_version)
    assert report["total_charts_linted"] == 1
    return [m["error"] for m in report["messages"] if m["severity"] >= WARNING] + report["errors"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_lint_strict_default_values(kube_version: str) -> None:
    assert lint_errors(None, kube_version) == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_lint_strict_production_values(kube_version: str) -> None:
    assert lint_errors(load_values(PRODUCTION_VALUES), kube_version) == []


BAD_VALUES = {
    "negative router replicas": ({"router": {"replicas": -1}}, "/router/replicas"),
    "replicas as a string": ({"router": {"replicas": "two"}}, "/router/replicas"),
    "unknown top-level key": ({"routers": {"replicas": 3}}, "routers"),
    "unknown router key": ({"router": {"replica": 3}}, "replica"),
    "even etcd member count": ({"etcd": {"replicas": 2}}, "/etcd/replicas"),
    "etcd endpoint without scheme": ({"etcd": {"external": {"endpoints": ["etcd:2379"]}}},
                                     "/etcd/external/endpoints/0"),
    "unknown config section": ({"config": {"placment": {}}}, "placment"),
    "alias weight zero": ({"config": {"aliases": {"a": {"x": 0}}}}, "/config/aliases/a/x"),
    "bad log level": ({"router": {"logLevel": "LOUD"}}, "/router/logLevel"),
    "port out of range": ({"router": {"port": 70000}}, "/router/port"),
    "latest vLLM tag": ({"workers": {"vllm": {"image": {"tag": "latest"}}}}, "/workers/vllm/image/tag"),
    "secret key as a number": ({"secrets": {"admin": {"keys": [123]}}}, "/secrets/admin/keys/0"),
}


@pytest.mark.parametrize("values,where", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_schema_rejects_bad_values_at_render_and_lint(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        render(values)
    assert where in str(caught.value)
    assert any(where in e for e in lint_errors(values, KUBE_VERSIONS[0]))


def test_schema_accepts_both_shipped_values_files() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)
        chart.validate_schema(load_values(PRODUCTION_VALUES))


def test_schema_config_sections_are_the_router_config_fields() -> None:
    """The schema forbids unknown config keys, so a field added to RouterConfig must be added there too."""
    from router.config import RouterConfig

    with helm.Chart.load(CHART) as chart:
        sections = set(chart.schema["properties"]["config"]["properties"])
    assert sections == set(RouterConfig.__struct_fields__)
