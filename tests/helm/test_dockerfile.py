"""The Dockerfile and the chart agree (Docker itself does not run here: static checks only)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
VALUES = yaml.safe_load((ROOT / "helm" / "lora-router" / "values.yaml").read_text())


def instruction(name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.+)$", DOCKERFILE, re.MULTILINE)]


def test_base_image_is_pinned_by_full_tag() -> None:
    [arg] = [a for a in instruction("ARG") if a.startswith("PYTHON_IMAGE=")]
    image = arg.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", image), image
    assert instruction("FROM") == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"], "two stages, one base"


def test_runs_as_the_non_root_user_the_chart_expects() -> None:
    [user] = instruction("USER")
    uid, gid = (int(part) for part in user.split(":"))
    assert uid != 0 and gid != 0
    for context in (VALUES["router"]["podSecurityContext"], VALUES["workers"]["registrar"]["securityContext"]):
        assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid)
    assert VALUES["router"]["podSecurityContext"]["fsGroup"] == gid


def test_entrypoint_is_the_cli_and_the_port_matches() -> None:
    assert instruction("ENTRYPOINT") == ['["lora-router"]']
    assert instruction("EXPOSE") == [str(VALUES["router"]["port"])]


def test_build_context_holds_every_package() -> None:
    """A package missing from COPY or .dockerignore would build an image that cannot import it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    copied = {c.split()[0].rstrip("/") for c in instruction("COPY") if not c.startswith("--from")}
    for package in packages:
        assert package in allowed, f"{package} is excluded by .dockerignore"
        assert package in copied, f"{package} is not copied into the build stage"
    assert "pyproject.toml" in allowed and "README.md" in allowed
