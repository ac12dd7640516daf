"""Remote adapter sources (s3://, https://, hf://) fetched beside each worker into a bounded local cache.

The registrar runs the fetcher next to its vLLM worker, because vLLM reads
adapters from its own disk: the fetcher downloads what the placement puts on
that worker, verifies it, moves it into `cache_dir/<entry>/` in one rename, and
publishes the complete entries in the worker's record. Routers then tell the
worker to load that local path (router.sources). Layout and the pure rules are
in `layout`; downloads in `sources`; archives in `archive`; the cache in `cache`.
"""
