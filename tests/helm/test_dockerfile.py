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


def test_one_version_everywhere() -> None:
    """router.__version__ is the source; the package, the chart's appVersion and the image agree."""
    from importlib.metadata import version

    # Read, not imported: under pytest, `import router` alone may find tests/router (a namespace).
    source = re.search(r'^__version__ = "([^"]+)"$', (ROOT / "router" / "__init__.py").read_text(), re.MULTILINE)
    assert source is not None
    router_version = source.group(1)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "router.__version__"}
    assert version("lora-router") == router_version
    chart = yaml.safe_load((ROOT / "helm" / "lora-router" / "Chart.yaml").read_text())
    assert chart["appVersion"] == router_version
    assert f"VERSION={router_version}" in instruction("ARG")


def test_image_carries_oci_version_and_revision_labels() -> None:
    for key, arg in (("version", "VERSION"), ("revision", "REVISION")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in DOCKERFILE, key
    assert 'org.opencontainers.image.licenses="Apache-2.0"' in DOCKERFILE


def test_dependencies_are_pinned_and_installed_in_their_own_layer() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {canonicalize_name(n): v for n, v in (line.split("==") for line in
            (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#"))}
    for spec in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} does not satisfy {spec}"
    copies = instruction("COPY")
    assert copies.index("constraints.txt ./") < copies.index("router/ router/"), \
        "dependencies must be installed before the sources are copied"
    assert "constraints.txt" in (ROOT / ".dockerignore").read_text()
