"""Per-worker key references resolve from env or file; bad ones fall back without leaking a value."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from router.keyrefs import KeyRefUnresolved, WorkerKeys, resolve_key_ref


def test_references_resolve_from_env_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPU_POOL_KEY", "k-env")
    (tmp_path / "key").write_text("\nk-file\nsecond\n")
    assert resolve_key_ref("env:GPU_POOL_KEY") == "k-env"
    assert resolve_key_ref("GPU_POOL_KEY") == "k-env"
    assert resolve_key_ref(f"file:{tmp_path / 'key'}") == "k-file"
    assert resolve_key_ref(str(tmp_path / "key")) == "k-file"


@pytest.mark.parametrize("ref", ["env:NOT_SET_ANYWHERE", "/no/such/file", "NOT_SET_EITHER"])
def test_unresolvable_references_raise(ref: str) -> None:
    with pytest.raises(KeyRefUnresolved):
        resolve_key_ref(ref)


def test_worker_keys_fall_back_and_warn_once(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    keys = WorkerKeys()
    with caplog.at_level(logging.WARNING):
        assert keys.resolve("env:MISSING_KEY_VAR") is None
        assert keys.resolve("env:MISSING_KEY_VAR") is None
    assert len(caplog.records) == 1
    monkeypatch.setenv("BAD_KEY", "line\x07bell")
    assert keys.resolve("env:BAD_KEY") is None
    assert "bell" not in caplog.text
    assert keys.resolve(None) is None
