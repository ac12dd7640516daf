"""The simulated vLLM worker: vLLM's client-visible contract over bench.perfmodel's timing."""
