"""What the catalog may accept: adapter names and sources, checked before anything is written.

Pure functions over the config's `security` section; the only outside fact
they need, a path with its symlinks resolved, comes from a `resolve` function
passed in (os.path.realpath by default), so tests can check every rule without
a filesystem trick and the admin API and the config's catalog use one rule set.

A name is also a URL path segment (/v1/loras/{name}), an etcd key segment and
half of `BASE@ADAPTER`, hence the narrow charset. A local source must be an
absolute path that, once `..` and symlinks are resolved, lies under an allowed
prefix: a worker is told to read whatever path the catalog holds, so the
catalog stores the resolved path, not the one the caller typed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from router.errors import InvalidAdapter

if TYPE_CHECKING:  # router.config checks its own adapters with these functions
    from router.config import SecurityConfig

NAME_MAX = 128
SOURCE_MAX = 4096
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HF_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9][A-Za-z0-9._/-]*)?")
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
KNOWN_SCHEMES = ("file", "hf", "s3", "https")
_HTTPS_PATH = re.compile(r"/[A-Za-z0-9._~/%+-]*(\.tar\.gz|\.tgz|\.tar)")
_SHA256 = re.compile(r"sha256=[0-9a-fA-F]{64}")


def validate_name(name: object, *, reserved: Collection[str], param: str = "lora_name") -> str:
    """An adapter name, or InvalidAdapter saying which rule it broke.

    `reserved` holds the base models' names and the aliases: a request for
    one of those must never reach an adapter instead.
    """
    if not isinstance(name, str) or not name:
        raise InvalidAdapter("The adapter name must be a non-empty string.", param=param)
    if len(name) > NAME_MAX:
        raise InvalidAdapter(f"The adapter name is {len(name)} characters long; at most {NAME_MAX} are allowed.",
                             param=param)
    if not _NAME.fullmatch(name):
        raise InvalidAdapter(f"Invalid adapter name {name!r}: use letters, digits, '.', '_' and '-', "
                             "starting with a letter or digit.", param=param)
    if name in reserved:
        raise InvalidAdapter(f"The adapter name '{name}' is taken by a base model or an alias.", param=param)
    return name


def validate_source(source: object, security: SecurityConfig, *, param: str = "lora_path",
                    resolve: Callable[[str], str] = os.path.realpath) -> str:
    """The canonical form the catalog stores: a resolved absolute path, or an hf:// / s3:// URI."""
    if not isinstance(source, str) or not source:
        raise InvalidAdapter("The adapter source must be a non-empty string.", param=param)
    if len(source) > SOURCE_MAX or any(ord(c) < 0x20 or c == "\x7f" for c in source):
        raise InvalidAdapter("The adapter source is too long or contains control characters.", param=param)
    if source.startswith("/"):
        return _local(source, security, param, resolve)
    scheme, sep, _ = source.partition("://")
    if not sep:
        raise InvalidAdapter(f"The adapter path '{source}' is relative; give an absolute path.", param=param)
    scheme = scheme.lower()
    if scheme not in KNOWN_SCHEMES:
        raise InvalidAdapter(f"Unknown source scheme '{scheme}://'; known: "
                             f"{', '.join(s + '://' for s in KNOWN_SCHEMES)}.", param=param)
    if scheme not in security.allowed_schemes:
        raise InvalidAdapter(f"Sources with '{scheme}://' are not allowed here (security.allowed_schemes).",
                             param=param)
    if scheme == "file":
        return _local_uri(source, security, param, resolve)
    canonical = _hf(source, param) if scheme == "hf" else _https(source, param) if scheme == "https" \
        else _s3(source, param)
    prefixes = security.allowed_source_prefixes
    if prefixes and not any(canonical.startswith(p) for p in prefixes):
        raise InvalidAdapter(f"The adapter source '{canonical}' is outside the allowed sources "
                             "(security.allowed_source_prefixes).", param=param)
    return canonical


def _https(source: str, param: str) -> str:
    """https://HOST[:PORT]/PATH.tar.gz (or .tgz, .tar), optionally #sha256=HEX: one archive the worker's
    fetcher downloads, checks against the digest when given, and unpacks."""
    parts = urlsplit(source)
    fragment_ok = not parts.fragment or _SHA256.fullmatch(parts.fragment)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if not parts.hostname or parts.username or parts.password or not port_ok or parts.query or \
            not fragment_ok or not _HTTPS_PATH.fullmatch(parts.path) or "/../" in parts.path + "/":
        raise InvalidAdapter(f"Invalid https source '{source}': expected https://HOST/PATH.tar.gz (or .tgz, "
                             ".tar), optionally ending #sha256=HEX, without credentials or a query.", param=param)
    return "https://" + source[len("https://"):]


def _local_uri(source: str, security: SecurityConfig, param: str, resolve: Callable[[str], str]) -> str:
    parts = urlsplit(source)
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise InvalidAdapter(f"Invalid file URI '{source}': expected file:///absolute/path.", param=param)
    if not parts.path.startswith("/"):
        raise InvalidAdapter(f"The adapter path in '{source}' is not absolute.", param=param)
    return _local(parts.path, security, param, resolve)


def _local(path: str, security: SecurityConfig, param: str, resolve: Callable[[str], str]) -> str:
    if "file" not in security.allowed_schemes:
        raise InvalidAdapter("Local adapter paths are not allowed here (security.allowed_schemes).", param=param)
    if not security.allowed_path_prefixes:
        raise InvalidAdapter("Local adapter paths are not allowed: security.allowed_path_prefixes is empty.",
                             param=param)
    resolved = resolve(path)
    for prefix in security.allowed_path_prefixes:
        root = resolve(prefix)
        if _is_under(resolved, root):
            return resolved
    raise InvalidAdapter(f"The adapter path '{path}' resolves to '{resolved}', which is outside the allowed "
                         "prefixes (security.allowed_path_prefixes).", param=param)


def _is_under(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:
        return False


def _hf(source: str, param: str) -> str:
    repo = source[len("hf://"):]
    if not _HF_REPO.fullmatch(repo) or ".." in repo:
        raise InvalidAdapter(f"Invalid Hugging Face source '{source}': expected hf://ORG/REPO[@REVISION].",
                             param=param)
    return "hf://" + repo


def _s3(source: str, param: str) -> str:
    rest = source[len("s3://"):]
    bucket, _, key = rest.partition("/")
    segments = key.split("/")
    if not _S3_BUCKET.fullmatch(bucket) or ".." in bucket or not key or any(s in ("", ".", "..") for s in segments):
        raise InvalidAdapter(f"Invalid S3 source '{source}': expected s3://BUCKET/KEY without empty, '.' or "
                             "'..' segments.", param=param)
    return "s3://" + rest
