"""The worker's /metrics text: the vLLM series a router reads (requests running and waiting, the LoRA
info, the prefix cache's queried and hit tokens), in vLLM's names, HELP texts and label sets, and the
simulator's own counters (slot swaps, disk reads, busy time) that `lora-bench live` reads back.

vLLM V1 defines its series in vllm/v1/metrics/loggers.py (PrometheusStatLogger): labels model_name and
engine on the engine's series (a real vLLM's /metrics writes them engine first, as here), present from
start-up at 0; prometheus_client exposes the Counter named vllm:prefix_cache_queries as
vllm:prefix_cache_queries_total, with that name on its HELP and TYPE lines too.
"""

from __future__ import annotations

import time

from bench.perfmodel import EngineModel


class WorkerMetrics:
    def __init__(self, model_name: str, max_loras: int, started: float) -> None:
        self.model_name = model_name
        self.started = started
        self.max_loras = max_loras
        self._lora_info: dict[tuple[str, str], float] = {}
        """(running, waiting) label values -> last timestamp: vLLM keeps old label sets in the output."""
        self.served_once = False
        """vLLM shows no lora_requests_info series at all before its engine has run a request."""
        self.received = 0
        """Inference requests that arrived, counted before anything else: tests read it to tell a
        request the router sent twice from one it sent once."""

    def render(self, engine: EngineModel, busy_s: float) -> str:
        if self.served_once:
            running = ",".join(engine.running_adapters())
            waiting = ",".join(engine.waiting_adapters())
            self._lora_info[(running, waiting)] = time.time()
        labels = f'engine="0",model_name="{self.model_name}"'
        lines = [
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.",
            "# TYPE process_start_time_seconds gauge",
            f"process_start_time_seconds {self.started}",
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {float(len(engine.running))}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} {float(len(engine.waiting))}",
            "# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.",
            "# TYPE vllm:prefix_cache_queries_total counter",
            f"vllm:prefix_cache_queries_total{{{labels}}} {float(engine.prefix_queries)}",
            "# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.",
            "# TYPE vllm:prefix_cache_hits_total counter",
            f"vllm:prefix_cache_hits_total{{{labels}}} {float(engine.prefix_hits)}",
        ]
        lines += _counter("lora_sim_slot_swaps_total", "GPU LoRA slot swaps (host -> GPU); simulator only.",
                          engine.slot_swaps)
        lines += _counter("lora_sim_adapter_loads_total", "Adapter weights read from disk into the host cache; "
                          "simulator only.", engine.host_loads)
        lines += _counter("lora_sim_busy_seconds_total", "Modelled engine step time; simulator only.", busy_s)
        lines += _counter("lora_sim_requests_received_total", "Inference requests that arrived; simulator only.",
                          self.received)
        if self._lora_info:
            lines += ["# HELP vllm:lora_requests_info Running stats on lora requests.",
                      "# TYPE vllm:lora_requests_info gauge"]
        for (run, wait), stamp in self._lora_info.items():
            lines.append(f'vllm:lora_requests_info{{max_lora="{self.max_loras}",running_lora_adapters="{run}",'
                         f'waiting_lora_adapters="{wait}"}} {stamp}')
        return "\n".join(lines) + "\n"


def _counter(name: str, help_: str, value: float) -> list[str]:
    """A counter vLLM does not have, prefixed lora_sim_ so no client mistakes it for a vLLM series."""
    return [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {float(value)}"]
