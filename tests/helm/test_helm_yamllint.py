"""yamllint on the chart's plain YAML files (templates/ are Go templates, not YAML)."""

from __future__ import annotations

from pathlib import Path

import pytest

linter = pytest.importorskip("yamllint.linter", reason="yamllint is not installed (the test extra has it)")
config = pytest.importorskip("yamllint.config")

CHART = Path(__file__).resolve().parents[2] / "helm" / "lora-router"
RULES = config.YamlLintConfig("extends: default\nrules:\n  line-length: {max: 120}\n")


@pytest.mark.parametrize("name", ["Chart.yaml", "values.yaml", "ci/production-values.yaml"])
def test_yamllint_clean(name: str) -> None:
    path = CHART / name
    problems = [f"{name}:{p.line}:{p.column} {p.level} {p.desc} ({p.rule})"
                for p in linter.run(path.read_text(), RULES, str(path))]
    assert problems == []


def test_yamllint_catches_a_broken_file() -> None:
    """The same check on a bad document reports it: the test above can fail."""
    problems = list(linter.run("---\nkey: [1,2\nother:  yes  \n", RULES))
    assert any(p.level == "error" for p in problems)
