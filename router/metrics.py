"""Prometheus metrics of the request path and the control plane, for the whole router.

Adapter names are user-controlled and unbounded, so the adapter label is
capped: the first `cap` adapters seen get their own series, the rest share
`__overflow__`.

`serve --workers N` runs N processes on one port, and a scrape reaches one
of them; so the parent gives them one PROMETHEUS_MULTIPROC_DIR and every
value is kept in prometheus_client's shared files: counters and histograms
are summed over the processes (a dead one's counts included), each gauge is
combined by the mode that answers for the router as a whole (in flight:
summed; leader: any process leads; etcd, worker health: the worst view).
Gauges mirroring live state (leader, etcd, in flight, event-loop tasks) are
sampled by each process at every control tick and by the scraped one at the
scrape.
Per-worker and per-adapter series of what is gone are dropped at the scrape,
because the shared files cannot forget a label set.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

OVERFLOW = "__overflow__"
TENANT_CAP = 256
"""Tenants come from the config, so are few; the cap still bounds the label if a config grows wild."""
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db")
_PROCESS_MIN = frozenset({"process_start_time_seconds", "process_max_fds"})
"""Process metrics that are not summed over the router's processes: the oldest start, the lowest limit."""


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Answer(msgspec.Struct):
    """Only `usage` of an OpenAI answer; every other field is skipped unread."""

    usage: _Usage | None = None


_decode_answer = msgspec.json.Decoder(_Answer).decode


def router_version() -> str:
    try:
        return version("lora-router")
    except PackageNotFoundError:
        return "unknown"


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


class Children:
    """A labelled metric's children, each looked up once: on the request path prometheus_client's `labels()`
    costs more than the increment. The label values are bounded (capped adapter and tenant labels, a few
    routes and statuses), and so is this cache."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: Counter | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[object, ...], Any] = {}

    def __call__(self, *values: object) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*(str(v) for v in values))
        return child


class RouterMetrics:
    def __init__(self, adapter_cap: int) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.multiproc_dir = os.environ.get(MULTIPROC_DIR) or None
        """Set (by `serve --workers N`): the files every process of this router writes its values to."""
        self.adapter = AdapterLabels(adapter_cap)
        self.requests = Counter("lora_router_requests", "Requests answered, by route, adapter and status.",
                                ["route", "adapter", "status"], registry=r)
        self.tenant = AdapterLabels(TENANT_CAP)
        self.tenant_requests = Counter("lora_router_tenant_requests",
                                       "Inference requests answered, by tenant ('' for admin keys and an "
                                       "open router) and status.", ["tenant", "status"], registry=r)
        self.tenant_tokens = Counter("lora_router_tenant_tokens",
                                     "Tokens of answered requests by tenant and kind (prompt, completion), "
                                     "from the usage of whole (non-streamed) answers.",
                                     ["tenant", "kind"], registry=r)
        self.ttft = Histogram("lora_router_time_to_first_byte_seconds",
                              "Time from request arrival to the first response byte sent.",
                              ["adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("lora_router_request_duration_seconds", "Total request latency.",
                                 ["adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.inflight = Gauge("lora_router_inflight_requests", "Inference requests in flight through the router.",
                              registry=r, multiprocess_mode="livesum")
        self.requests_in_flight = 0
        """Counted by the request path, copied into `inflight` by `sample`: an int costs it nothing."""
        self._first_byte = Children(self.ttft)
        self.answered = Children(self.requests)
        """By (route, adapter label, status)."""
        self.tenant_answered = Children(self.tenant_requests)
        """By (tenant label, status)."""
        self.took = Children(self.latency)
        self._tokens = Children(self.tenant_tokens)
        self.cold_starts = Counter("lora_router_cold_starts", "Cold starts (first load of an adapter).",
                                   ["adapter", "outcome"], registry=r)
        self.cold_start_wait = Histogram("lora_router_cold_start_wait_seconds",
                                         "How long requests waited for a cold adapter.",
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.overflows = Counter("lora_router_overflows",
                                 "Requests whose adapter's holders all had full batches, by where they went: "
                                 "another holder, a worker that loaded it for them, or queued at a holder.",
                                 ["outcome"], registry=r)
        self.prefix_picks = Counter("lora_router_prefix_picks",
                                    "Requests with a prompt of a block or more, by whether they went to a holder "
                                    "this router believes has the prompt's beginning cached.", ["outcome"],
                                    registry=r)
        self.prefix_pick = Children(self.prefix_picks)
        """By outcome (cached, uncached): counted on every request with a prompt."""
        self.retries = Counter("lora_router_retries", "Requests retried on another worker, by reason.",
                               ["reason"], registry=r)
        self.migrations = Counter("lora_router_migrations",
                                  "Streams cut by their worker, by outcome: continued on another worker, finished "
                                  "by the router (cut after the last token), not migrated (rules), or failed (no "
                                  "worker could continue it).", ["outcome"], registry=r)
        self.migrated_tokens = Counter("lora_router_migrated_tokens",
                                       "Tokens carried over into continuations of cut streams.", registry=r)
        self.worker_healthy = Gauge("lora_router_worker_healthy", "1 if the worker is taking requests.",
                                    ["worker"], registry=r, multiprocess_mode="livemin")
        self.worker_adapters = Gauge("lora_router_worker_adapters", "Adapters a worker holds.",
                                     ["worker"], registry=r, multiprocess_mode="livemax")
        self.replicas_desired = Gauge("lora_router_adapter_replicas_desired",
                                      "Replicas the placement asks for.", ["adapter"], registry=r,
                                      multiprocess_mode="livemax")
        self.replicas_holding = Gauge("lora_router_adapter_replicas_holding",
                                      "Workers confirmed to hold the adapter.", ["adapter"], registry=r,
                                      multiprocess_mode="livemax")
        self.adapter_ops = Counter("lora_router_adapter_operations",
                                   "Loads and unloads sent to workers, by outcome and reason.",
                                   ["op", "outcome", "reason"], registry=r)
        self.adapter_failed = Gauge("lora_router_adapter_failed",
                                    "1 while the adapter is marked failed in the catalog: every worker placed "
                                    "for it refused to load it (reason in GET /v1/loras/{name}).",
                                    ["adapter"], registry=r, multiprocess_mode="livemax")
        self.adapters_failed = Gauge("lora_router_adapters_failed",
                                     "Adapters marked failed in the catalog (what the alert counts: the per-adapter "
                                     "series stop at the adapter label cap).", registry=r, multiprocess_mode="livemax")
        self.reconcile_lag = Gauge("lora_router_reconcile_lag_seconds",
                                   "Age of the oldest unmet placement action.", registry=r,
                                   multiprocess_mode="livemax")
        self.placement_churn = Counter("lora_router_placement_moves",
                                       "Replica assignments added or removed by placement ticks.", registry=r)
        self.is_leader = Gauge("lora_router_leader", "1 while this router is the leader.", registry=r,
                               multiprocess_mode="livemax")
        self.etcd_up = Gauge("lora_router_etcd_connected", "1 while etcd answers.", registry=r,
                             multiprocess_mode="livemin")
        self.unplaced = Gauge("lora_router_adapters_unplaced",
                              "Adapters the placement could not give all their replicas (short of workers "
                              "or slots).", registry=r, multiprocess_mode="livemax")
        self.last_tick = Gauge("lora_router_control_last_tick_timestamp_seconds",
                               "Unix time of the control loop's last tick: a stalled loop shows as its age.",
                               registry=r, multiprocess_mode="livemin")
        self.placement_epoch = Gauge("lora_router_placement_epoch", "Epoch of the placement in use.",
                                     registry=r, multiprocess_mode="livemax")
        self.asyncio_tasks = Gauge("lora_router_asyncio_tasks",
                                   "Tasks alive on the event loop at scrape time: flat under steady load, "
                                   "or something leaks them.", registry=r, multiprocess_mode="livesum")
        self.build_info = Gauge("lora_router_build_info", "The router's version; always 1.", ["version"],
                                registry=r, multiprocess_mode="livemax")
        self.build_info.labels(router_version()).set(1)

    def sample(self, *, leader: bool, etcd_connected: bool, unplaced: int) -> None:
        """Set the gauges that mirror live state; called on the event loop."""
        self.is_leader.set(1 if leader else 0)
        self.unplaced.set(unplaced)
        self.etcd_up.set(1 if etcd_connected else 0)
        self.inflight.set(self.requests_in_flight)
        self.asyncio_tasks.set(len(asyncio.all_tasks()))

    def count_usage(self, tenant: str | None, answer: bytes) -> None:
        """Tokens from a whole answer's `usage`; an answer without one (or not JSON) counts nothing."""
        try:
            usage = _decode_answer(answer).usage
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if usage is not None:
            label = self.tenant(tenant)
            self._tokens(label, "prompt").inc(max(usage.prompt_tokens, 0))
            self._tokens(label, "completion").inc(max(usage.completion_tokens, 0))

    def first_byte(self, adapter: str | None, seconds: float) -> None:
        """On every inference response."""
        self._first_byte(self.adapter(adapter)).observe(seconds)

    def workers_changed(self, joined: Iterable[str], left: Iterable[str]) -> None:
        """A worker is exported as healthy from the moment it is known, and not at all once it is gone."""
        for worker in joined:
            self.worker_healthy.labels(worker).set(1)
        for worker in left:
            self.forget(self.worker_healthy, worker)
            self.forget(self.worker_adapters, worker)

    def forget(self, gauge: Gauge, label: str) -> None:
        """Drop one series; with shared files the scrape drops it instead (see `exposition`)."""
        if self.multiproc_dir is None:
            gauge.remove(label)

    def exposition(self, workers: Collection[str], adapters: Collection[str]) -> bytes:
        """The text format for a scrape: every process's values, minus the series of departed
        workers and of adapters the placement no longer has."""
        source: Collector = (self.registry if self.multiproc_dir is None
                             else MultiProcessCollector(None, self.multiproc_dir))
        live = {"lora_router_worker_healthy": workers, "lora_router_worker_adapters": workers,
                "lora_router_adapter_replicas_desired": adapters,
                "lora_router_adapter_replicas_holding": adapters}
        return generate_latest(_Scrape(source, live, _RouterProcesses(self.multiproc_dir)))


class _Scrape(Collector):
    """One scrape's collector: `source` with departed series dropped, then the processes' metrics."""

    def __init__(self, source: Collector, live: dict[str, Collection[str]], processes: Collector) -> None:
        self._source = source
        self._live = live
        self._processes = processes

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            keep = self._live.get(family.name)
            if keep is not None:
                family.samples = [s for s in family.samples if next(iter(s.labels.values()), None) in keep]
            yield family
        yield from self._processes.collect()


class _RouterProcesses(Collector):
    """process_* for the router: this process alone, or summed over every live process sharing the files."""

    def __init__(self, multiproc_dir: str | None) -> None:
        self._dir = multiproc_dir

    def _pids(self) -> list[int]:
        if self._dir is None:
            return [os.getpid()]
        found = (_LIVE_FILE.fullmatch(p.name) for p in Path(self._dir).iterdir())
        return sorted({int(m.group(1)) for m in found if m is not None})

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in self._pids():
            for family in ProcessCollector(pid=_constant(pid), registry=None).collect():
                have = families.setdefault(family.name, family)
                if have is not family:
                    a, b = have.samples[0], family.samples[0]
                    value = min(a.value, b.value) if family.name in _PROCESS_MIN else a.value + b.value
                    have.samples[0] = a._replace(value=value)
        yield from families.values()


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid
