"""The README's test command, `pip install -e '.[test]' && pytest`, must run every suite a fresh machine can
run: whatever a test module skips itself without (`pytest.importorskip`) must come with the `test` extra."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCAL = {"router", "bench", "allocator", "discovery"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def test_the_test_extra_installs_every_module_a_test_skips_without() -> None:
    extra = {_name(r) for r in tomllib.loads((REPO / "pyproject.toml").read_text())
             ["project"]["optional-dependencies"]["test"]}
    providers = importlib.metadata.packages_distributions()
    needed = {m.split(".")[0] for path in (REPO / "tests").rglob("*.py")
              for m in re.findall(r"importorskip\(\s*[\"']([\w.]+)[\"']", path.read_text())} - LOCAL
    assert needed, "no importorskip found: the scan is broken"
    missing = {m: providers.get(m) for m in needed
               if not {_name(d) for d in providers.get(m, [])} & extra}
    assert not missing, f"modules tests skip without, not in the test extra (module -> distribution): {missing}"
