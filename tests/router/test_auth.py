"""Client keys: hashed, compared against every stored digest, tenants confined to their adapters."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.auth import Authenticator
from router.config import key_digest, load_config
from router.errors import Forbidden, Unauthorized


def _auth(tmp_path: Path) -> Authenticator:
    (tmp_path / "admin").write_text("admin-secret\n")
    (tmp_path / "acme").write_text("# acme's keys\nacme-key-1\nacme-key-2\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
auth: {{admin_keys_file: {tmp_path / 'admin'}}}
tenants:
  acme: {{keys_file: {tmp_path / 'acme'}, adapters: ["acme-*"], default_adapter: acme-chat}}
  globex: {{keys_sha256: ["{key_digest('globex-key')}"]}}
""")
    loaded = load_config(cfg)
    return Authenticator(loaded.config, loaded.secrets)


def test_keys_resolve_to_callers(tmp_path: Path) -> None:
    auth = _auth(tmp_path)
    assert auth.caller("Bearer admin-secret").admin
    acme = auth.caller("Bearer acme-key-2")
    assert acme.tenant == "acme" and acme.default_adapter == "acme-chat"
    assert auth.caller("bearer globex-key").tenant == "globex"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic YWJj", "Bearer wrong", "acme-key-1"])
def test_missing_malformed_or_wrong_keys_are_401(tmp_path: Path, header: str | None) -> None:
    with pytest.raises(Unauthorized):
        _auth(tmp_path).caller(header)


def test_tenant_key_is_not_an_admin_key(tmp_path: Path) -> None:
    auth = _auth(tmp_path)
    with pytest.raises(Forbidden):
        auth.require_admin("Bearer acme-key-1")
    assert auth.require_admin("Bearer admin-secret").admin


def test_tenants_see_only_their_adapters(tmp_path: Path) -> None:
    auth = _auth(tmp_path)
    acme = auth.caller("Bearer acme-key-1")
    globex = auth.caller("Bearer globex-key")
    assert acme.may_use("acme-support", "acme")
    assert acme.may_use("acme-shared", None)
    assert not acme.may_use("other", None), "outside its patterns"
    assert not acme.may_use("acme-x", "globex"), "owned by another tenant"
    assert not globex.may_use("acme-support", "acme")


def test_no_keys_configured_means_open(tmp_path: Path) -> None:
    loaded = load_config(None)
    auth = Authenticator(loaded.config, loaded.secrets)
    assert not auth.enabled
    assert auth.caller(None).open
    assert auth.require_admin(None).open


def test_secrets_never_kept_in_plain_text(tmp_path: Path) -> None:
    (tmp_path / "admin").write_text("admin-secret\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"auth: {{admin_keys_file: {tmp_path / 'admin'}}}\n")
    loaded = load_config(cfg)
    assert "admin-secret" not in repr(loaded)
    assert key_digest("admin-secret") in loaded.secrets.admin_digests
