"""Every rendered manifest is valid Kubernetes (kubernetes-validate --strict) for 1.28 and 1.31."""

from __future__ import annotations

import pytest

pytest.importorskip("helm_python", reason="helm-python-sdk is not installed: pip install -e '.[helm]'")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from helmchart import FULLNAME, NAMESPACE, Manifest, find, kinds, render, scenarios

KUBE_VERSIONS = ["1.28.0", "1.31.0"]
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
             ("gateway.networking.k8s.io/v1", "HTTPRoute")}
"""Custom resources kubernetes-validate has no schema for; their shape is checked below instead."""


def builtin(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if (m["apiVersion"], m["kind"]) not in CRD_KINDS]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", scenarios().keys())
def test_every_builtin_manifest_validates_strictly(scenario: str, kube_version: str) -> None:
    manifests = render(scenarios()[scenario])
    assert len(builtin(manifests)) >= 5
    for manifest in builtin(manifests):
        try:
            kubernetes_validate.validate(manifest, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']} on {kube_version}: {exc.message} "
                        f"at {list(exc.path)}")


def test_validator_rejects_an_unknown_field() -> None:
    """The strict validation above would catch a typo in a template."""
    manifest = next(m for m in render(None) if m["kind"] == "Deployment")
    manifest["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, KUBE_VERSIONS[0], strict=True)


def test_service_monitor_shape() -> None:
    """kubernetes-validate has no schema for the Prometheus operator's CRD: check what it needs."""
    manifests = render(scenarios()["production"])
    monitor = find(manifests, "ServiceMonitor", f"{FULLNAME}-router")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = find(manifests, "Service", FULLNAME)
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint == {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    assert "http" in [p["name"] for p in service["spec"]["ports"]]


def test_no_service_monitor_unless_enabled() -> None:
    assert "ServiceMonitor" not in kinds(render(None))
