"""Render the lora-router chart offline (helm-python-sdk) and pick objects out of the result.

Imported only by test modules that already importorskip'ed helm_python, so the
helm extra stays optional.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "lora-router"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
RELEASE = "prod"
NAMESPACE = "llm"
FULLNAME = f"{RELEASE}-lora-router"

Manifest = dict[str, Any]


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def render_files(values: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, for `values` merged over the chart's defaults."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(dict(values) if values else None, name=RELEASE, namespace=NAMESPACE,
                            is_install=True)


def render(values: Mapping[str, Any] | None = None) -> list[Manifest]:
    """Every object the chart renders for `values`."""
    return [doc for name, text in sorted(render_files(values).items()) if name.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def chart_defaults() -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        return chart.values


def find(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def kinds(manifests: list[Manifest]) -> set[str]:
    return {m["kind"] for m in manifests}


def container(manifest: Manifest, name: str) -> dict[str, Any]:
    matches = [c for c in manifest["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert len(matches) == 1, f"no single container {name} in {manifest['metadata']['name']}"
    return matches[0]


def flag(args: list[str], name: str) -> str:
    """The value after `name` in an argv-style list."""
    assert args.count(name) == 1, f"{name} appears {args.count(name)} times in {args}"
    return args[args.index(name) + 1]


def walk(node: Any) -> Iterator[Any]:
    """Every dict, list and scalar inside a manifest, depth first."""
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


ADMIN_KEY = "sk-admin-0123456789abcdef"
TENANT_KEY = "sk-tenant-acme-0123456789"
WORKER_KEY = "sk-worker-0123456789abcdef"

TRIAL_VALUES: dict[str, Any] = {
    "etcd": {"external": {"endpoints": ["http://etcd-a.infra:2379", "http://etcd-b.infra:2379"]}},
    "secrets": {"admin": {"keys": [ADMIN_KEY]},
                "tenants": {"acme": {"keys": [TENANT_KEY]}},
                "workerApiKey": {"value": WORKER_KEY}},
    "config": {"tenants": {"acme": {"adapters": ["support-*"]}}},
    "workers": {"vllm": {"enabled": True, "adapterVolume": {"emptyDir": {}}}},
    "networkPolicy": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True}},
}
"""External etcd, keys given inline (the chart makes the Secret), workers on: the other branches."""


def _extras(name: str) -> dict[str, Any]:
    return {"extraEnv": [{"name": f"EXTRA_{name.upper()}", "value": "1"}],
            "extraVolumes": [{"name": f"extra-{name}", "emptyDir": {}}],
            "extraVolumeMounts": [{"name": f"extra-{name}", "mountPath": f"/extra/{name}"}]}


SPREAD = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
           "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "vllm"}}}]
SECURED_ETCD_VALUES: dict[str, Any] = {
    "etcd": {"external": {"endpoints": ["https://etcd-a.infra:2379", "https://etcd-b.infra:2379"],
                          "tls": {"existingSecret": "etcd-client-tls"},
                          "auth": {"user": "lora-router", "existingSecret": "etcd-password"}},
             "backup": {"enabled": True, "persistence": {"existingClaim": "etcd-snapshots"}}},
    "secrets": {"admin": {"existingSecret": "lora-router-admin", "existingSecretKey": "keys"},
                "workerApiKey": {"existingSecret": "vllm-api-key"}},
    "router": _extras("router"),
    "workers": {"vllm": {"enabled": True, "extraEnv": [{"name": "EXTRA_VLLM", "value": "1"}],
                         "extraVolumes": [{"name": "model-cache", "emptyDir": {}}],
                         "extraVolumeMounts": [{"name": "model-cache", "mountPath": "/root/.cache"}],
                         "topologySpreadConstraints": SPREAD},
                "registrar": {"extraEnv": [{"name": "EXTRA_REGISTRAR", "value": "1"}],
                              "extraVolumeMounts": [{"name": "model-cache", "mountPath": "/cache",
                                                     "readOnly": True}]}},
    "ingress": {"enabled": True, "className": "nginx",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-buffering": "off"},
                "tls": [{"hosts": ["lora-router.example.com"], "secretName": "lora-router-tls"}]},
    "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateway"}],
                  "hostnames": ["llm.example.com"], "timeouts": {"request": "600s"}},
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                "grafanaDashboard": {"enabled": True}},
}
"""Operations on: a TLS + password external etcd with backups, extra volumes/env in every container,
Ingress, HTTPRoute, monitoring objects and the test hook."""
OWN_ETCD_VALUES: dict[str, Any] = {
    "etcd": {**_extras("etcd"), "backup": {"enabled": True},
             "tls": {"enabled": True, "existingSecret": "etcd-peer-tls", "clientSecret": "etcd-client-tls"},
             "topologySpreadConstraints": [{**SPREAD[0], "labelSelector": {
                 "matchLabels": {"app.kubernetes.io/component": "etcd"}}}]},
    "workers": {"vllm": {"enabled": True}},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "networkPolicy": {"enabled": True},
}
"""The chart's own etcd with client and peer TLS, backups, extras and spread; workers and monitors on."""


def scenarios() -> dict[str, dict[str, Any] | None]:
    """The value sets every rendering check runs over."""
    return {"default": None, "production": load_values(PRODUCTION_VALUES), "trial": TRIAL_VALUES,
            "secured-etcd": SECURED_ETCD_VALUES, "own-etcd": OWN_ETCD_VALUES}
