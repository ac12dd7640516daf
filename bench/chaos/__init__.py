"""Chaos scenarios: break a real fleet (etcd, simulated workers, registrars, routers) and count what was lost.

`fleet` starts and breaks the processes, `load` is the open-loop client that
counts every answer, `observe` reads routers and processes, `report` prints
the table; `scenarios/` holds one module per scenario, each a coroutine that
returns a `ScenarioResult` with the properties it checked.
"""
