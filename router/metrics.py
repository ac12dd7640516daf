"""Prometheus metrics of the request path and the control plane, in one registry per router.

Adapter names are user-controlled and unbounded, so the adapter label is
capped: the first `cap` adapters seen get their own series, the rest share
`__overflow__`.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OVERFLOW = "__overflow__"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class AdapterLabels:
    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._seen: set[str] = set()

    def __call__(self, adapter: str | None) -> str:
        if adapter is None:
            return ""
        if adapter in self._seen:
            return adapter
        if len(self._seen) < self._cap:
            self._seen.add(adapter)
            return adapter
        return OVERFLOW


class RouterMetrics:
    def __init__(self, adapter_cap: int) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.adapter = AdapterLabels(adapter_cap)
        self.requests = Counter("lora_router_requests", "Requests answered, by route, adapter and status.",
                                ["route", "adapter", "status"], registry=r)
        self.ttft = Histogram("lora_router_time_to_first_byte_seconds",
                              "Time from request arrival to the first response byte sent.",
                              ["adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("lora_router_request_duration_seconds", "Total request latency.",
                                 ["adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("lora_router_inflight_requests", "Requests in flight, per worker.",
                              ["worker"], registry=r)
        self.cold_starts = Counter("lora_router_cold_starts", "Cold starts (first load of an adapter).",
                                   ["adapter", "outcome"], registry=r)
        self.cold_start_wait = Histogram("lora_router_cold_start_wait_seconds",
                                         "How long requests waited for a cold adapter.",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.overflows = Counter("lora_router_overflows",
                                 "Requests whose adapter's holders all had full batches, by where they went: "
                                 "another holder, a worker that loaded it for them, or queued at a holder.",
                                 ["outcome"], registry=r)
        self.retries = Counter("lora_router_retries", "Requests retried on another worker, by reason.",
                               ["reason"], registry=r)
        self.worker_healthy = Gauge("lora_router_worker_healthy", "1 if the worker is taking requests.",
                                    ["worker"], registry=r)
        self.worker_adapters = Gauge("lora_router_worker_adapters", "Adapters a worker holds.",
                                     ["worker"], registry=r)
        self.replicas_desired = Gauge("lora_router_adapter_replicas_desired",
                                      "Replicas the placement asks for.", ["adapter"], registry=r)
        self.replicas_holding = Gauge("lora_router_adapter_replicas_holding",
                                      "Workers confirmed to hold the adapter.", ["adapter"], registry=r)
        self.adapter_ops = Counter("lora_router_adapter_operations",
                                   "Loads and unloads sent to workers, by outcome and reason.",
                                   ["op", "outcome", "reason"], registry=r)
        self.adapter_failed = Gauge("lora_router_adapter_failed",
                                    "1 while the adapter is marked failed in the catalog: every worker placed "
                                    "for it refused to load it (reason in GET /v1/loras/{name}).",
                                    ["adapter"], registry=r)
        self.reconcile_lag = Gauge("lora_router_reconcile_lag_seconds",
                                   "Age of the oldest unmet placement action.", registry=r)
        self.placement_churn = Counter("lora_router_placement_moves",
                                       "Replica assignments added or removed by placement ticks.", registry=r)
        self.is_leader = Gauge("lora_router_leader", "1 while this router is the leader.", registry=r)
        self.etcd_up = Gauge("lora_router_etcd_connected", "1 while etcd answers.", registry=r)
        self.placement_epoch = Gauge("lora_router_placement_epoch", "Epoch of the placement in use.",
                                     registry=r)
        self.asyncio_tasks = Gauge("lora_router_asyncio_tasks",
                                   "Tasks alive on the event loop at scrape time: flat under steady load, "
                                   "or something leaks them.", registry=r)
        self.asyncio_tasks.set_function(_loop_tasks)


def _loop_tasks() -> int:
    """Counted when scraped, which happens on the loop; 0 if collected from elsewhere."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return 0
