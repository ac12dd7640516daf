"""The control tick: publish this router's demand; if leader, compute the placement and write it, fenced.

Wiring in server.py:
`control = ControlLoop(router_id, live, state, demand, metrics, demand_store, placement_store, election,
catalog=catalog_store)`;
run `control.run()` as one of the process's loops and call `control.trigger()` when
membership changes (the leader then re-places at once instead of at the next tick).

Every `control.tick_s` (read from the live config each time, so a reload applies
at the next tick) the arrivals counted since the previous tick and the current
in-flight counts are folded into an EWMA (allocator.estimator, rise/fall time
constants from the placement config) and published as this router's leased
report. The leader sums every router's report, runs the allocator over the
catalog and the membership with the previous placement (for stickiness and the
scale-down cooldown, whose clock is wall time because the next leader may be
another host), and writes the result only when its assignments or replica counts
changed, and then only the replica sets that changed (discovery.stores.PlacementStore): what is
written carries no demand (see `durable`), so an idle or steady fleet costs etcd no placement writes.
After a config reload the leader also writes the config's new or changed `adapters:` entries. A write refused
because leadership was lost is logged and waits for the next tick; so is an
etcd that does not answer: a tick never stops the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec

from allocator.estimator import update_all
from allocator.measure import assignments
from allocator.model import Adapter, Demand, Placement
from allocator.placement import Planner
from discovery.aio import wait_event
from discovery.election import LeaderElection
from discovery.errors import EtcdUnavailable, NotLeader
from discovery.stores import CatalogStore, DemandStore, PlacementStore, sum_demand
from router.catalog_sync import declare_config_adapters
from router.core.events import PlacementChanged
from router.core.fleetstate import FleetState
from router.demand import DemandCounter
from router.live import LiveConfig
from router.metrics import RouterMetrics

log = logging.getLogger(__name__)


def durable(placement: Placement) -> Placement:
    """The placement as written: assignments and sizes without the demand that sized them.

    Demand moves on every tick (an idle adapter's estimate decays for minutes) and already lives in
    the leased load reports; carried in the durable record, it made every tick a write.
    """
    return msgspec.structs.replace(placement, replica_sets={
        name: msgspec.structs.replace(rs, demand_rps=0.0) for name, rs in placement.replica_sets.items()})


def same_assignment(a: Placement, b: Placement) -> bool:
    """Equal but for epoch, computation time and demand: nothing worth a write."""
    return durable(a).replica_sets == durable(b).replica_sets and a.unplaced == b.unplaced


class ControlLoop:
    def __init__(self, router_id: str, live: LiveConfig, state: FleetState, demand: DemandCounter,
                 metrics: RouterMetrics, demand_store: DemandStore, placement_store: PlacementStore,
                 election: LeaderElection, clock: Callable[[], float] = time.time, *,
                 catalog: CatalogStore | None = None) -> None:
        self._router_id = router_id
        self._live = live
        self._state = state
        self._demand = demand
        self._metrics = metrics
        self._catalog = catalog
        self._declared_version = live.loaded.version
        self._demand_store = demand_store
        self._placement_store = placement_store
        self._election = election
        self._clock = clock
        self._planner = Planner()
        self._wake = asyncio.Event()
        self._sampled_at: float | None = None
        self.ticks = 0
        self.last_tick_at: float | None = None
        self.placements_written = 0
        self.estimates: dict[str, Demand] = {}
        """This router's smoothed demand per adapter as of its last tick (what it reports to etcd)."""
        self.etcd_reachable = True
        """As of the last etcd call; while False the placement cannot follow demand."""

    def trigger(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        next_tick = self._clock()
        while True:
            await wait_event(self._wake, max(0.0, next_tick - self._clock()))
            self._wake.clear()
            now = self._clock()
            if now >= next_tick:
                next_tick = now + self._live.config.control.tick_s
                await self.tick(now)
            else:
                await self.place(now)

    async def tick(self, now: float) -> None:
        """One full tick: sample, publish, and place if leader.

        Every router publishes, so every router learns here whether etcd answers, followers included.
        """
        self.ticks += 1
        self.last_tick_at = now
        self._metrics.last_tick.set(now)
        self.sample(now)
        try:
            await self._demand_store.publish(self._router_id, self.estimates, at=now)
        except EtcdUnavailable as exc:
            self._etcd_failed("publishing demand", exc)
        else:
            self.etcd_reachable = True
            await self.place(now)
        self.sample_metrics()

    def sample_metrics(self) -> None:
        """Mirror leadership and etcd reachability in the gauges, as of now (leadership is asked of the
        election, never cached); at every tick and scrape."""
        self._metrics.sample(leader=self._election.is_leader, etcd_connected=self.etcd_reachable,
                             unplaced=len(self._state.placement.unplaced))

    def sample(self, now: float) -> None:
        """Fold the arrivals since the last sample and the in-flight counts into the estimates."""
        placement = self._live.config.placement
        arrivals = self._demand.take_arrivals()
        if self._sampled_at is None or now <= self._sampled_at:
            dt = self._live.config.control.tick_s
        else:
            dt = now - self._sampled_at
        self._sampled_at = now
        self.estimates = update_all(self.estimates, arrivals, self._demand.inflight, dt,
                                    placement.rise_tau_s, placement.fall_tau_s)

    async def place(self, now: float) -> None:
        if not self._election.is_leader:
            return
        try:
            reports = await self._demand_store.read_all()
        except EtcdUnavailable as exc:
            self._etcd_failed("reading demand", exc)
            return
        loaded, state = self._live.loaded, self._state
        if not (state.catalog_known and state.membership_known):
            return
        if self._catalog is not None and loaded.version != self._declared_version:
            self._declared_version = loaded.version
            try:
                await declare_config_adapters(self._catalog, loaded, state.bases(), strict=True)
            except EtcdUnavailable as exc:
                self._etcd_failed("declaring the config's adapters", exc)
        previous = state.placement
        workers = [v.record.to_worker() for v in state.workers.values()]
        adapters = [Adapter(name=r.name, base_model=r.base_model, rank=r.rank) for r in state.catalog.values()]
        placement = self._planner.place(workers, adapters, sum_demand(reports), loaded.config.placement,
                                        previous if previous.epoch else None, now)
        if previous.epoch and same_assignment(previous, placement) and not self._placement_store.legacy:
            return  # (an older version's single document is rewritten in today's layout even so)
        placement = durable(placement)
        try:
            await self._placement_store.write(placement, self._election)
        except NotLeader as exc:
            log.info("placement epoch %d not written: %s", placement.epoch, exc)
            return
        except EtcdUnavailable as exc:
            self._etcd_failed("writing the placement", exc)
            return
        self.placements_written += 1
        self._metrics.placement_churn.inc(len(assignments(previous) ^ assignments(placement)))
        state.apply(PlacementChanged(placement))

    def _etcd_failed(self, what: str, exc: EtcdUnavailable) -> None:
        self.etcd_reachable = False
        log.warning("control tick: %s failed: %s: %s", what, type(exc).__name__, exc)

