"""Write constraints.txt: the runtime dependencies of lora-router (no extras), transitively, pinned
to the versions installed in this environment. The Dockerfile installs exactly these in their own
layer, so image builds are reproducible and a source edit does not reinstall them.

Run in a venv where `pip install -e .` has just resolved: python scripts/lock_runtime_deps.py
"""

from __future__ import annotations

from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

OUT = Path(__file__).resolve().parents[1] / "constraints.txt"
HEADER = "# Runtime dependencies of lora-router, pinned (scripts/lock_runtime_deps.py writes this file).\n"


def closure(project: str) -> dict[str, str]:
    pinned: dict[str, str] = {}
    pending = [Requirement(r) for r in distribution(project).requires or ()]
    while pending:
        requirement = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in pinned:
            continue
        dist = distribution(requirement.name)
        pinned[name] = dist.version
        pending += [Requirement(r) for r in dist.requires or ()]
    return pinned


if __name__ == "__main__":
    OUT.write_text(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(closure("lora-router").items())))
    print(f"wrote {OUT}")
