"""The live strategies, how each is deployed on a fresh fleet, and its counterpart in the simulator.

- `lora-router`: the router as shipped, placement on: registrars announce the simulator's placement
  slots (the host LRU, 2 x max_loras), the leader places, reconcilers load, requests go to holders.
- `lora-router-spread`: our own no-placement baseline, needing no extra package: every adapter is
  registered on every worker beforehand and placed on all of them (min_replicas = workers), so the
  router's picking (power of two among the workers whose batch has room for the adapter) chooses among
  all workers whatever they hold (`spread` in the simulator).
- `vllm-router-rr`, `vllm-router-ch`: vllm-router (round robin; consistent hash on X-Session-ID, sent as
  the adapter name) in front of workers that hold every adapter, loaded beforehand with vLLM's call.
  The simulator replays consistent hash with vllm-router's own adapter -> worker map (ringprobe.py).
- `vllm-router-ca`: vllm-router's cache_aware policy (its defaults: a per-model radix tree of the
  prompts' text it sent to each worker, the longest match wins unless the load is unbalanced) in front
  of the same everything-preloaded workers; `cache-aware` in the simulator.

The router's clocks and rates are scaled with the workers' speed, so its control loop runs at the same
pace in virtual time as the simulator's (2 s tick, per-replica req/s, cooldowns, estimator decay).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from bench.live.fleet import LiveFleet
from bench.proxybench.targets import vllm_router_binary


class LiveStrategy(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    sim: str
    """The simulator's strategy that makes the same decisions."""
    deploy: Callable[[LiveFleet, int], list[str]]
    """Start the front door on a fleet whose workers run; returns the base URLs the load goes to."""
    missing: Callable[[], str | None] = lambda: None
    """Why it cannot run here (a package not installed), or None."""
    places: bool = False
    """Its front door runs the placement, whose moves are counted as churn."""
    probe_ring: bool = False
    """Ask the front door for its adapter -> worker map after the run, for the simulator to replay."""


def router_config(speed: float, min_replicas: int = 1) -> dict[str, object]:
    """lora-router's defaults (those the simulator's lora-router uses), with time x speed, rates / speed."""
    return {
        "control": {"tick_s": 2.0 * speed, "reconcile_s": 5.0 * speed, "lease_ttl_s": 3,
                    "worker_ops_per_s": 10.0 / speed, "retry_base_s": 0.5 * speed},
        "placement": {"defaults": {"per_replica_rps": 10.0 / speed, "min_replicas": min_replicas,
                                   "scale_down_cooldown_s": 60.0 * speed},
                      "fall_tau_s": 30.0 * speed},
    }


def _lora_router(fleet: LiveFleet, routers: int) -> list[str]:
    return fleet.start_lora_routers(router_config(fleet.shape.speed), routers, fleet.shape.host_slots)


def _spread(fleet: LiveFleet, routers: int) -> list[str]:
    fleet.preload()
    workers = len(fleet.workers)
    bases = fleet.start_lora_routers(router_config(fleet.shape.speed, min_replicas=workers), routers,
                                     slots=len(fleet.names))
    for b in bases:
        fleet.wait_holders(b, workers)
    return bases


def _vllm_router(policy: str) -> Callable[[LiveFleet, int], list[str]]:
    def deploy(fleet: LiveFleet, _routers: int) -> list[str]:
        binary = vllm_router_binary()
        assert binary is not None
        fleet.preload()
        return [fleet.start_vllm_router(binary, policy)]

    return deploy


def _no_vllm_router() -> str | None:
    if vllm_router_binary() is None:
        return "vllm-router not installed (pip install vllm-router, or set VLLM_ROUTER_BIN)"
    return None


STRATEGIES: dict[str, LiveStrategy] = {s.name: s for s in (
    LiveStrategy(name="lora-router", sim="lora-router", deploy=_lora_router, places=True),
    LiveStrategy(name="lora-router-spread", sim="spread", deploy=_spread, places=True),
    LiveStrategy(name="vllm-router-rr", sim="round-robin", deploy=_vllm_router("round_robin"),
                 missing=_no_vllm_router),
    LiveStrategy(name="vllm-router-ch", sim="consistent-hash", deploy=_vllm_router("consistent_hash"),
                 missing=_no_vllm_router, probe_ring=True),
    LiveStrategy(name="vllm-router-ca", sim="cache-aware", deploy=_vllm_router("cache_aware"),
                 missing=_no_vllm_router),
)}
