"""Adapter sources that try to leave security.allowed_path_prefixes, sent through the admin API.

The rules themselves are unit-tested in tests/control/test_validation.py; here a
real router is asked over HTTP, by both catalog endpoints, and must answer 400
in OpenAI's shape with `param` naming the field, and write nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from hostile_helpers import ADMIN, assert_openai_error, bearer, catalog_names, post_json, send

from router.localfleet import make_adapter_dir

ESCAPES = {
    "dot-dot": "{root}/../outside",
    "dot-dot-deep": "{root}/acme-chat/../../outside",
    "dot-dot-many": "{root}/" + "../" * 12 + "{outside_rel}",
    "file-uri-dot-dot": "file://{root}/../outside",
    "file-uri-localhost": "file://localhost{root}/../outside",
    "file-uri-remote-host": "file://attacker.example{root}/acme-chat",
    "file-uri-query": "file://{root}/acme-chat?x=../../outside",
    "symlink-out": "{root}/link-out",
    "symlink-chain": "{root}/link-chain",
    "symlinked-dir-in-the-middle": "{root}/link-root/{outside_rel}",
    "prefix-lookalike": "{root}-evil/acme-chat",
    "relative": "acme-chat",
    "home": "~/acme-chat",
    "nul": "{root}/acme-chat\x00/../../outside",
    "newline": "{root}/acme-chat\n",
}


def _layout(root: Path, tmp_path: Path) -> dict[str, str]:
    """An outside adapter, symlinks from inside the prefix to it, and a sibling whose name starts like it."""
    outside = make_adapter_dir(tmp_path / "elsewhere", "outside")
    (root.parent / "outside").symlink_to(outside, target_is_directory=True)
    make_adapter_dir(Path(f"{root}-evil"), "acme-chat")
    (root / "link-out").symlink_to(outside)
    (root / "link-mid").symlink_to(root / "link-out")
    (root / "link-chain").symlink_to(root / "link-mid")
    (root / "link-root").symlink_to("/")
    return {"root": str(root), "outside_rel": str(outside).lstrip("/")}


def _bodies(name: str, source: str) -> list[tuple[str, dict[str, object], str]]:
    return [("/v1/load_lora_adapter", {"lora_name": name, "lora_path": source}, "lora_path"),
            ("/v1/loras", {"lora_name": name, "source": {"uri": source}}, "source.uri")]


def test_sources_outside_the_prefix_are_refused_and_nothing_is_written(hostile_router: Callable,
                                                                      tmp_path: Path) -> None:
    env = hostile_router()
    layout = _layout(env.adapter_root, tmp_path)
    for kind, template in ESCAPES.items():
        for path, body, param in _bodies(f"escape-{kind}", template.format(**layout)):
            status, _, raw = post_json(env.port, path, body)
            error = assert_openai_error(status, raw, 400)
            assert error["param"] == param, (kind, path, error)
        status, _, raw = send(env.port, "GET", f"/v1/loras/escape-{kind}", headers=bearer(ADMIN))
        assert_openai_error(status, raw, 404)
    assert catalog_names(env.port) == {"acme-chat", "globex-chat"}


def test_a_symlink_inside_the_prefix_is_stored_resolved_so_repointing_it_later_changes_nothing(
        hostile_router: Callable, tmp_path: Path) -> None:
    env = hostile_router()
    layout = _layout(env.adapter_root, tmp_path)
    link = env.adapter_root / "link-ok"
    link.symlink_to(env.adapter_root / "acme-chat")
    status, _, raw = post_json(env.port, "/v1/loras", {"lora_name": "via-link", "source": {"uri": str(link)}})
    assert status == 201, raw
    assert json.loads(raw)["source"] == os.path.realpath(env.adapter_root / "acme-chat")
    link.unlink()
    link.symlink_to(Path("/") / layout["outside_rel"])
    status, _, raw = send(env.port, "GET", "/v1/loras/via-link", headers=bearer(ADMIN))
    assert status == 200 and json.loads(raw)["source"] == os.path.realpath(env.adapter_root / "acme-chat")


def test_a_symlink_loop_never_resolves_outside_the_prefix(hostile_router: Callable) -> None:
    """A loop cannot be resolved; whatever the router answers, a stored source must lie under the prefix."""
    env = hostile_router()
    (env.adapter_root / "loop-a").symlink_to(env.adapter_root / "loop-b")
    (env.adapter_root / "loop-b").symlink_to(env.adapter_root / "loop-a")
    status, _, raw = post_json(env.port, "/v1/loras",
                               {"lora_name": "loop", "source": {"uri": str(env.adapter_root / "loop-a")}})
    if status == 201:
        assert json.loads(raw)["source"].startswith(str(env.adapter_root.resolve()) + "/")
    else:
        assert status in (400, 404), "refused as a bad source, or as a path with no adapter in it"
        assert_openai_error(status, raw, status)
