"""Every metric the dashboard and the alert rules name is one a real router exports, with the
labels they select on: a renamed metric breaks this test, not a dashboard in production."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from router.localfleet import base_url

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "helm" / "lora-router" / "files"
NOT_COUNTED_HERE = {"lora_router_cold_starts_total", "lora_router_overflows_total", "lora_router_retries_total",
                    "lora_router_prefix_picks_total"}
"""Counters this run never increments; a single process exports them at zero, shared files do not."""
TARGET_LABELS = {"namespace", "job", "instance", "pod"}
"""Added by Prometheus when it scrapes, never by the router."""
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",)}
SELECTOR = re.compile(r"\b((?:lora_router|process)_[a-z_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def expressions() -> list[str]:
    """PromQL of the dashboard's targets and of every rule."""
    dashboard = json.loads((FILES / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    rules = yaml.safe_load((FILES / "prometheus-rules.yaml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return exprs


def referenced(exprs: list[str]) -> dict[str, set[str]]:
    """Metric name -> the labels the expressions match on."""
    found: dict[str, set[str]] = {}
    for expr in exprs:
        for name, selector in SELECTOR.findall(expr):
            found.setdefault(name, set()).update(MATCHER.findall(selector or ""))
    return found


def exported(text: str) -> dict[str, set[str]]:
    """Sample name -> its label names, for every sample name each family can have."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        labels = {k for s in family.samples for k in s.labels}
        for suffix in SUFFIXES.get(family.type, ("",)):
            names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def test_the_parser_sees_every_metric_family() -> None:
    """`referenced` must find names in selectors, bare names and inside functions alike."""
    names = referenced(['sum by (a) (rate(lora_router_x_total{a="1",b=~"2"}[5m])) / lora_router_y',
                        "time() - process_start_time_seconds"])
    assert names == {"lora_router_x_total": {"a", "b"}, "lora_router_y": set(), "process_start_time_seconds": set()}


@pytest.mark.parametrize("processes", [1, 2])
def test_dashboard_and_rules_name_only_metrics_a_router_exports(
        tmp_path: Path, start_workers: Callable, start_router: Callable, adapter_dirs: Callable,
        poll_until: Callable, processes: int) -> None:
    """Also with `serve --workers 2` (the chart's router.processes), whose metrics come from shared files."""
    root = adapter_dirs("dash-a").parent
    (tmp_path / "acme-keys").write_text("acme-key-1\n")
    workers = start_workers(2)
    config = {
        "security": {"allowed_path_prefixes": [str(root)]},
        "control": {"tick_s": 0.5, "reconcile_s": 1.0},
        "tenants": {"acme": {"keys_file": str(tmp_path / "acme-keys"), "adapters": ["dash-*"]}},
        "adapters": [{"name": "dash-a", "source": str(root / "dash-a"), "base_model": "sim-base"}],
    }
    router = start_router(config, workers=[base_url(w) for w in workers],
                          extra_args=("--workers", str(processes)))

    def complete() -> int:
        request = urllib.request.Request(
            router.url + "/v1/completions",
            data=json.dumps({"model": "dash-a", "prompt": "x", "max_tokens": 2, "ignore_eos": True}).encode(),
            headers={"Authorization": "Bearer acme-key-1", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status

    assert complete() == 200

    def scrape_once_held() -> str | None:
        text = urllib.request.urlopen(router.url + "/metrics", timeout=10).read().decode()
        return text if "lora_router_worker_adapters{" in text else None

    text = poll_until(scrape_once_held, 30, what="a worker reported holding the adapter")
    have = exported(text)
    wanted = referenced(expressions())
    assert {"lora_router_requests_total", "lora_router_tenant_requests_total", "lora_router_leader",
            "lora_router_time_to_first_byte_seconds_bucket"} <= wanted.keys()
    missing = {name for name in wanted if name not in have}
    if processes > 1:  # shared files hold only what was counted: these events did not happen in this run
        missing -= NOT_COUNTED_HERE
    assert not missing, f"named by the dashboard or rules, not exported by the router: {sorted(missing)}"
    wrong_labels = {name: sorted(labels - have[name] - TARGET_LABELS) for name, labels in wanted.items()
                    if name in have and labels - have[name] - TARGET_LABELS}
    assert not wrong_labels, f"selected on labels the router does not export: {wrong_labels}"
    assert 'lora_router_tenant_requests_total{status="200",tenant="acme"} 1.0' in text
    assert 'lora_router_tenant_tokens_total{kind="completion",tenant="acme"} 2.0' in text
