"""Everything one router process holds, in one place, so handlers and loops share one view."""

from __future__ import annotations

import random
import time

import aiohttp

from allocator.model import Demand
from discovery.election import LeaderElection
from router.auth import Authenticator
from router.config import LoadedConfig
from router.core.events import RulesChanged
from router.core.fleetstate import FleetState
from router.core.health import HealthRules
from router.core.retrybudget import RetryBudget
from router.demand import DemandCounter
from router.keyrefs import WorkerKeys, key_ref_path
from router.loads import Loader
from router.metrics import RouterMetrics
from router.sources import SourceLocator
from router.upstream import UpstreamPool
from router.workers import WorkerClient


class RouterRuntime:
    def __init__(self, loaded: LoadedConfig, session: aiohttp.ClientSession, router_id: str,
                 rng: random.Random | None = None) -> None:
        self.router_id = router_id
        self.session = session
        self.rng = rng or random.Random()
        self.state = FleetState()
        self.demand = DemandCounter()
        self.estimates: dict[str, Demand] = {}
        """This router's smoothed demand per adapter as of its last control tick (what it reports to etcd)."""
        self.metrics = RouterMetrics(loaded.config.metrics_adapter_cap)
        self.started_at = time.time()
        self.election: LeaderElection | None = None
        """Set by the control loop; leadership is read from it live (see `is_leader`)."""
        self.placement_seen = False
        self.etcd_reachable = True
        """As of the control loop's last etcd call; while False the placement cannot follow demand."""
        self.worker_keys = WorkerKeys()
        self.auth_lines: dict[str, str] = {}
        self.upstream = UpstreamPool(loaded.config.timeouts.connect_s, loaded.config.timeouts.read_s)
        self.workers = WorkerClient(session, loaded.secrets.worker_api_key, loaded.config.timeouts.worker_call_s)
        self.sources = SourceLocator(self.state)
        self.workers.locate = self.sources.path
        self.apply_config(loaded)
        self.loads = Loader(self.state, self.workers, self.metrics)

    def apply_config(self, loaded: LoadedConfig) -> None:
        """Swap in a validated config; in-flight requests keep the objects they already hold."""
        self.loaded = loaded
        self.config = loaded.config
        self.auth = Authenticator(loaded.config, loaded.secrets)
        self.retry_budget = RetryBudget(loaded.config.control.retry_budget_ratio)
        self.upstream.configure(loaded.config.timeouts.connect_s, loaded.config.timeouts.read_s)
        key = loaded.secrets.worker_api_key
        self.worker_auth_line = f"Authorization: Bearer {key}\r\n" if key else ""
        self.workers.configure(loaded.secrets.worker_api_key, loaded.config.timeouts.worker_call_s)
        control = loaded.config.control
        self.state.apply(RulesChanged(HealthRules(down_after_failures=control.down_after_failures,
                                                  max_ejected_fraction=control.max_ejected_fraction,
                                                  probe_s=control.health_probe_s)))

    @property
    def is_leader(self) -> bool:
        """Asked of the election each time, never cached: a router paused past its lease (GC, SIGSTOP, a
        stalled VM) must stop claiming leadership the moment it runs again, before its next tick."""
        return self.election is not None and self.election.is_leader

    @property
    def leader_id(self) -> str | None:
        return self.election.leader_id if self.election is not None else None

    def refresh_worker_keys(self) -> list[str]:
        """Per-worker keys from the records' references; workers without one use the global key.

        Returns the ids of workers whose key changed (for the reload log line; never the keys)."""
        by_url: dict[str, str] = {}
        lines: dict[str, str] = {}
        for view in self.state.workers.values():
            key = self.worker_keys.resolve(view.record.api_key_ref)
            if key is not None:
                by_url[view.url] = key
                lines[view.id] = f"Authorization: Bearer {key}\r\n"
        self.workers.set_worker_keys(by_url)
        old, self.auth_lines = self.auth_lines, lines
        return sorted(w for w in old.keys() | lines.keys() if old.get(w) != lines.get(w))

    def worker_key_files(self) -> list[str]:
        """Files the workers' key references name: a reload re-reads them, the reloader watches them."""
        refs = {view.record.api_key_ref for view in self.state.workers.values()}
        return sorted({path for ref in refs if ref and (path := key_ref_path(ref)) is not None})

    def auth_line(self, worker_id: str) -> str:
        return self.auth_lines.get(worker_id, self.worker_auth_line)

    def sample_metrics(self) -> None:
        """Mirror leadership and etcd reachability in the gauges, as of now (leadership is live, see
        `is_leader`); at every control tick and scrape."""
        self.metrics.sample(leader=self.is_leader, etcd_connected=self.etcd_reachable,
                            unplaced=len(self.state.placement.unplaced))

    def ready(self) -> bool:
        return bool(self.state.workers) and self.placement_seen
