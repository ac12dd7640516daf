"""Everything one router process holds, in one place, so handlers and loops share one view."""

from __future__ import annotations

import random
import time

import aiohttp

from router.auth import Authenticator
from router.coldstart import ColdStarter
from router.config import LoadedConfig
from router.demand import DemandCounter
from router.fleet import Fleet
from router.metrics import RouterMetrics
from router.retrybudget import RetryBudget
from router.workers import WorkerClient


class RouterRuntime:
    def __init__(self, loaded: LoadedConfig, session: aiohttp.ClientSession, router_id: str,
                 rng: random.Random | None = None) -> None:
        self.router_id = router_id
        self.session = session
        self.rng = rng or random.Random()
        self.fleet = Fleet()
        self.demand = DemandCounter()
        self.metrics = RouterMetrics(loaded.config.metrics_adapter_cap)
        self.started_at = time.time()
        self.leader_id: str | None = None
        self.is_leader = False
        self.placement_seen = False
        self.workers = WorkerClient(session, loaded.secrets.worker_api_key, loaded.config.timeouts.worker_call_s)
        self.apply_config(loaded)
        self.cold = ColdStarter(self.fleet, self.workers, self.metrics,
                                lambda: self.config.timeouts.cold_start_timeout_s)

    def apply_config(self, loaded: LoadedConfig) -> None:
        """Swap in a validated config; in-flight requests keep the objects they already hold."""
        self.loaded = loaded
        self.config = loaded.config
        self.auth = Authenticator(loaded.config, loaded.secrets)
        self.retry_budget = RetryBudget(loaded.config.control.retry_budget_ratio)
        self.upstream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=loaded.config.timeouts.connect_s,
                                                      sock_read=loaded.config.timeouts.read_s)
        self.worker_auth = ({"Authorization": f"Bearer {loaded.secrets.worker_api_key}"}
                            if loaded.secrets.worker_api_key else {})
        self.workers.configure(loaded.secrets.worker_api_key, loaded.config.timeouts.worker_call_s)

    def ready(self) -> bool:
        return bool(self.fleet.workers) and self.placement_seen
