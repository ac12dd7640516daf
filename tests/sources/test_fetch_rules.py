"""The fetcher's pure rules and on-disk steps, without processes: eviction order, archive safety,
adapter checks, source validation and the router's cache-aware ordering."""

from __future__ import annotations

from pathlib import Path

import pytest
from s3_helpers import adapter_config, tarball

from discovery.fetch.cache import AdapterCache, CacheEntry, plan_eviction
from discovery.fetch.layout import split_hf, split_https
from discovery.fetch.verify import FetchError, check_adapter, extract_archive
from router.config import SecurityConfig
from router.core.fleetstate import WorkerState
from router.core.records import AdapterRecord, WorkerRecord, cache_status, entry_name
from router.core.routing import cached_first
from router.errors import InvalidAdapter
from router.validation import validate_source


def test_eviction_takes_least_recently_used_unpinned_entries_only() -> None:
    entries = {"old": CacheEntry(bytes=40, used=1.0), "pinned": CacheEntry(bytes=40, used=0.5),
               "new": CacheEntry(bytes=40, used=3.0)}
    assert plan_eviction(entries, 20, 200, pinned=set()) == []
    assert plan_eviction(entries, 60, 150, pinned={"pinned"}) == ["old"]
    assert plan_eviction(entries, 100, 150, pinned={"pinned"}) == ["old", "new"]
    assert plan_eviction(entries, 120, 150, pinned={"pinned"}) is None


def test_cache_admits_atomically_and_a_restart_keeps_complete_entries_only(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path / "c", bound=1000)
    staging = cache.staging("a" * 32)
    (staging / "adapter_config.json").write_bytes(b"x" * 100)
    assert cache.admit("a" * 32, staging, 100, pinned=set()) == []
    partial = cache.staging("b" * 32)
    (partial / "adapter_config.json").write_bytes(b"half")
    again = AdapterCache(tmp_path / "c", bound=1000)
    assert set(again.entries) == {"a" * 32} and again.used_bytes == 100
    assert list(again.tmp.iterdir()) == []
    with pytest.raises(FetchError) as refused:
        again.admit("c" * 32, again.staging("c" * 32), 950, pinned={"a" * 32})
    assert refused.value.reason == "cache_full" and not refused.value.permanent


@pytest.mark.parametrize(("members", "link", "reason"), [
    ({"../up": b"x", "adapter_config.json": adapter_config()}, None, "unsafe_archive"),
    ({"/etc/abs": b"x"}, None, "unsafe_archive"),
    ({"a/../../up": b"x"}, None, "unsafe_archive"),
    ({"adapter_config.json": adapter_config()}, ("w", "../../outside"), "unsafe_archive"),
    ({"adapter_config.json": adapter_config(), "big": b"x" * 5000}, None, "too_large"),
])
def test_archives_that_escape_or_overflow_are_refused(tmp_path: Path, members: dict[str, bytes],
                                                       link: tuple[str, str] | None, reason: str) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tarball(members, symlink=link))
    (tmp_path / "out").mkdir()
    with pytest.raises(FetchError) as refused:
        extract_archive(archive, tmp_path / "out", max_bytes=4096)
    assert refused.value.reason == reason
    assert not (tmp_path / "up").exists() and not (tmp_path / "outside").exists()


def test_an_archive_with_one_top_directory_is_the_adapter(tmp_path: Path) -> None:
    archive = tmp_path / "a.tgz"
    archive.write_bytes(tarball({"my-adapter/adapter_config.json": adapter_config(),
                                 "my-adapter/my-adapter": b"weights"}))
    (tmp_path / "out").mkdir()
    extract_archive(archive, tmp_path / "out", max_bytes=1 << 20)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter_config.json", "my-adapter"]
    assert check_adapter(tmp_path / "out", max_rank=8, max_bytes=1 << 20) > 0
    with pytest.raises(FetchError, match="rank_too_high"):
        check_adapter(tmp_path / "out", max_rank=4, max_bytes=1 << 20)


@pytest.mark.parametrize("source", [
    "s3://adapters/team/a", "s3://adapters/team/a.tar.gz", "hf://org/repo", "hf://org/repo@v1.2",
    "https://models.example.com/a/b.tar.gz", "https://models.example.com:8443/a.tgz#sha256=" + "ab" * 32,
])
def test_remote_sources_accepted(source: str) -> None:
    security = SecurityConfig(allowed_schemes=["s3", "hf", "https"])
    assert validate_source(source, security) == source


@pytest.mark.parametrize("source", [
    "https://models.example.com/a/b.zip", "https://user:pw@models.example.com/a.tar.gz",
    "https://models.example.com/a.tar.gz?x=1", "https://models.example.com/a.tar.gz#md5=1",
    "https://models.example.com/../a.tar.gz", "hf://org/repo@", "s3://other-bucket/a",
])
def test_remote_sources_refused(source: str) -> None:
    security = SecurityConfig(allowed_schemes=["s3", "hf", "https"],
                              allowed_source_prefixes=["s3://adapters/", "hf://org/", "https://models.example.com/"])
    with pytest.raises(InvalidAdapter):
        validate_source(source, security)


def test_source_forms_split_as_documented() -> None:
    assert split_hf("hf://org/repo@main") == ("org/repo", "main")
    assert split_hf("hf://org/repo") == ("org/repo", None)
    assert split_https("https://h/a.tgz#sha256=AB") == ("https://h/a.tgz", "ab")


def test_workers_with_the_adapter_cached_come_first_in_hrw_order() -> None:
    source = "s3://adapters/x"

    def view(wid: str, cached: bool) -> WorkerState:
        return WorkerState(WorkerRecord(id=wid, url=f"http://{wid}:1", base_models=("b",), cache_dir="/c",
                                       cached=(entry_name(source),) if cached else ()))

    ranked = [view("w1", False), view("w2", True), view("w3", False), view("w4", True)]
    adapter = AdapterRecord(name="x", source=source, base_model="b")
    assert [v.id for v in cached_first(ranked, adapter)] == ["w2", "w4", "w1", "w3"]
    local = AdapterRecord(name="y", source="/models/y", base_model="b")
    assert [v.id for v in cached_first(ranked, local)] == ["w1", "w2", "w3", "w4"]
    assert cache_status("/c", (), {entry_name(source): "bad_adapter: x"}, source) == ("failed", "bad_adapter: x")
