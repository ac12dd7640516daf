"""`lora-bench live`: the simulator's workloads replayed over HTTP against real processes.

fleet.py starts what a strategy needs (embedded etcd, simulated workers, registrars, routers or
vllm-router), replay.py sends the request stream open-loop, counters.py reads the workers' own
counters, run.py turns one run into the simulator's metrics, compare.py sets the simulator beside it.
"""
