"""Adapter names and sources: every rule of router.validation, with a real filesystem for symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from router.config import SecurityConfig
from router.errors import InvalidAdapter
from router.validation import validate_name, validate_source


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    root = tmp_path / "adapters"
    (root / "good").mkdir(parents=True)
    return root


def security(root: Path, schemes: tuple[str, ...] = ("file",)) -> SecurityConfig:
    return SecurityConfig(allowed_path_prefixes=[str(root)], allowed_schemes=list(schemes))


@pytest.mark.parametrize("name", ["a", "sql-lora", "Team_1.v2", "x" * 128])
def test_good_names_pass_unchanged(name: str) -> None:
    assert validate_name(name, reserved={"base"}) == name


@pytest.mark.parametrize("name", ["", "x" * 129, "-lead", ".hidden", "a/b", "a@b", "a b", "ünï", "a\n", None, 7])
def test_bad_names_are_rejected_with_the_field_named(name: object) -> None:
    with pytest.raises(InvalidAdapter) as err:
        validate_name(name, reserved=set())
    assert err.value.status == 400 and err.value.param == "lora_name"


def test_the_base_model_name_is_reserved() -> None:
    with pytest.raises(InvalidAdapter, match="base model or an alias"):
        validate_name("tiny-llama", reserved={"tiny-llama"})


def test_local_paths_are_canonicalised(allowed: Path) -> None:
    messy = f"{allowed}/./good/../good/"
    assert validate_source(messy, security(allowed)) == str((allowed / "good").resolve())
    assert validate_source(f"file://{allowed}/good", security(allowed)) == str((allowed / "good").resolve())


@pytest.mark.parametrize("path", ["good", "./good", "adapters/good", "~/x"])
def test_relative_paths_are_rejected(allowed: Path, path: str) -> None:
    with pytest.raises(InvalidAdapter, match="relative"):
        validate_source(path, security(allowed))


def test_dot_dot_out_of_the_prefix_is_rejected(allowed: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    with pytest.raises(InvalidAdapter, match="outside the allowed"):
        validate_source(f"{allowed}/../secret", security(allowed))
    with pytest.raises(InvalidAdapter, match="outside the allowed"):
        validate_source("/etc/passwd", security(allowed))


def test_a_prefix_is_a_directory_not_a_string_prefix(allowed: Path, tmp_path: Path) -> None:
    sibling = tmp_path / "adapters-evil"
    sibling.mkdir()
    with pytest.raises(InvalidAdapter, match="outside the allowed"):
        validate_source(str(sibling), security(allowed))


def test_a_symlink_out_of_the_prefix_is_rejected(allowed: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, allowed / "escape")
    with pytest.raises(InvalidAdapter, match="outside the allowed"):
        validate_source(str(allowed / "escape"), security(allowed))


def test_a_symlink_inside_the_prefix_is_followed(allowed: Path) -> None:
    os.symlink(allowed / "good", allowed / "alias")
    assert validate_source(str(allowed / "alias"), security(allowed)) == str((allowed / "good").resolve())


def test_no_prefixes_means_no_local_paths(allowed: Path) -> None:
    with pytest.raises(InvalidAdapter, match="allowed_path_prefixes is empty"):
        validate_source(str(allowed / "good"), SecurityConfig(allowed_path_prefixes=[]))


@pytest.mark.parametrize("uri", ["ftp://host/x", "http://host/x", "gs://bucket/x", "javascript://x"])
def test_unknown_schemes_are_rejected(allowed: Path, uri: str) -> None:
    with pytest.raises(InvalidAdapter, match="Unknown source scheme"):
        validate_source(uri, security(allowed, ("file", "hf", "s3")))


@pytest.mark.parametrize("uri", ["hf://org/repo", "s3://bucket/key"])
def test_hf_and_s3_need_to_be_allowed(allowed: Path, uri: str) -> None:
    with pytest.raises(InvalidAdapter, match="not allowed"):
        validate_source(uri, security(allowed))
    assert validate_source(uri, security(allowed, ("file", "hf", "s3"))) == uri


@pytest.mark.parametrize("uri", ["hf://repo", "hf://org/../x", "hf://org/repo/extra", "s3://b", "s3://bucket/",
                                 "s3://bucket/a/../b", "s3://BUCKET/key", "file://host/etc"])
def test_malformed_remote_sources_are_rejected(allowed: Path, uri: str) -> None:
    with pytest.raises(InvalidAdapter):
        validate_source(uri, security(allowed, ("file", "hf", "s3")))


@pytest.mark.parametrize("source", ["", None, 3, "/ok\x00", "/" + "a" * 5000])
def test_empty_odd_or_huge_sources_are_rejected(allowed: Path, source: object) -> None:
    with pytest.raises(InvalidAdapter):
        validate_source(source, security(allowed))
