"""The allocator: where each LoRA adapter should live. Pure: no I/O, no clock, no randomness.

Same inputs give the same output in every process on every router replica;
time (`now`) and demand are arguments. The public API, kept stable for the
router and the simulator:

allocator.model      Worker, Adapter, Demand, ReplicaSet, Placement, Action (shared types)

allocator.hrw        score(adapter, worker_id, weight=1.0) -> float
                     rank_workers(adapter, workers) -> list[Worker]   best first; cold start loads on [0]
                     pick_weighted(key, choices: {variant: weight}) -> str   A/B alias, sticky per key
                     Encoding "lr1": see the module docstring; ties by worker id.

allocator.config     ReplicaConfig (the `placement:` section; ReplicaConfig() is valid)
                     ReplicaPolicy, PolicyOverride, PlanBudget
                     policy_for(config, adapter_name) -> ReplicaPolicy
                         exact name > longest matching glob (ties: pattern text) > defaults
                     decode_config(data: bytes, type_, source: str) -> type_   YAML/JSON
                     ConfigError   message = "FILE: key.path: problem (got VALUE)"

allocator.estimator  update(state: Demand, arrivals, inflight, dt, rise_tau_s, fall_tau_s) -> Demand
                     update_all(states, arrivals, inflight, dt, rise_tau_s, fall_tau_s) -> dict
                     smooth(previous, sample, dt, rise_tau_s, fall_tau_s) -> float

allocator.sizing     size_replicas(policies, demand, previous_sets, candidates, now) -> Sizes
                     (state = previous ReplicaSet.replicas / resized_at, so a new leader continues)

allocator.placement  compute_placement(workers, adapters, demand, config, previous, now) -> Placement
                     Planner().place(same arguments) -> Placement   equal results, caches rankings
                     (keep one Planner in the leader: a join/leave re-plan: ~7 ms at 10k x 1k, ~65 ms at 100k x 10k)
                     fit_to_slots(...)   the slot-shortage rule; DuplicateName (ValueError)

allocator.plan       plan_actions(desired, holdings, loading, budget: PlanBudget) -> list[Action]
                         desired: a Placement, or DesiredIndex(placement) built once for many rounds

allocator.measure    assignments, moved, expected_loads, imbalance, slot_overflow
allocator.synthetic  workers(n, slots), adapters(n), zipf_demand(n, s, total_rps, rng=None)
"""
