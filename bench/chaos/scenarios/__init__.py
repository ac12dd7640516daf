"""The scenarios, by name, in the order the table lists them; `soak` is the long one, not in the default set."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bench.chaos.report import ScenarioResult
from bench.chaos.scenarios import (
    adapter_loss,
    bad_worker,
    etcd_outage,
    leader_kill,
    soak,
    worker_kill,
)
from bench.chaos.scenarios.common import Context

Scenario = Callable[[Context], Awaitable[ScenarioResult]]

SCENARIOS: dict[str, Scenario] = {
    worker_kill.NAME: worker_kill.run,
    etcd_outage.NAME: etcd_outage.run,
    leader_kill.NAME: leader_kill.run,
    adapter_loss.NAME: adapter_loss.run,
    bad_worker.NAME: bad_worker.run,
    soak.NAME: soak.run,
}
LONG = frozenset({"soak"})
DEFAULT = tuple(n for n in SCENARIOS if n not in LONG)
