"""lora-router: a front door for fleets of vLLM workers serving many LoRA adapters."""

__version__ = "0.1.0"
"""The one source of the version: pyproject reads it; Chart.yaml's appVersion and the image's label must match it
(tests/helm/test_dockerfile.py)."""
