"""Proxy overhead, measured the same way for every proxy: one load, CPU time of the proxy's process tree.

On a 2-core machine the simulated worker saturates first, so requests per
second say little about a proxy; the CPU it spends per request does. Each
proxy runs pinned to one core; the worker and the load generator share the other.
"""
