"""Client keys -> who is calling. Keys are kept as sha256 digests and compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from router.config import RouterConfig, Secrets, TenantConfig
from router.core.names import OPEN, Caller
from router.errors import Forbidden, Unauthorized


class Authenticator:
    def __init__(self, config: RouterConfig, secrets: Secrets) -> None:
        self._admin = tuple(bytes.fromhex(d) for d in sorted(secrets.admin_digests))
        self._tenants = tuple((bytes.fromhex(d), t) for d, t in sorted(secrets.tenant_digests.items()))
        self._tenant_config: dict[str, TenantConfig] = dict(config.tenants)

    @property
    def enabled(self) -> bool:
        return bool(self._admin or self._tenants)

    def caller(self, authorization: str | None) -> Caller:
        """Resolve the Authorization header; every stored digest is compared, match or not."""
        if not self.enabled:
            return OPEN
        key = _bearer(authorization)
        # aiohttp decodes header bytes as utf-8 with surrogateescape: hash the bytes the client sent
        # (a plain encode() raised on any non-UTF-8 byte in the header: a 500).
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        admin = False
        for stored in self._admin:
            admin |= hmac.compare_digest(stored, digest)
        tenant: str | None = None
        for stored, name in self._tenants:
            if hmac.compare_digest(stored, digest):
                tenant = name
        if admin:
            return Caller(admin=True)
        if tenant is None:
            raise Unauthorized("Invalid API key.")
        cfg = self._tenant_config[tenant]
        return Caller(tenant=tenant, patterns=tuple(cfg.adapters), default_adapter=cfg.default_adapter)

    def require_admin(self, authorization: str | None) -> Caller:
        caller = self.caller(authorization)
        if not (caller.admin or caller.open):
            raise Forbidden("This endpoint needs an admin key.")
        return caller


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
    return key.strip()
