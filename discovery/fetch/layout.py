"""The cache's names and the rules every process shares, pure: routers and fetchers must agree on them.

An entry's name is a digest of the source URI, so the path a router asks
vLLM to load (`cache_dir/<entry>`) follows from the catalog record and the
worker's record alone, with no lookup table to keep in step.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from router.core.records import entry_name

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
TMP_DIR = ".tmp"
"""Downloads in progress and entries being evicted, inside the cache (same filesystem: rename is atomic)."""


def entry_path(cache_dir: str, source: str) -> str:
    return os.path.join(cache_dir, entry_name(source))


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def split_s3(source: str) -> tuple[str, str]:
    """(bucket, key or prefix) of an s3:// source."""
    parts = urlsplit(source)
    return parts.netloc, parts.path.lstrip("/")


def split_hf(source: str) -> tuple[str, str | None]:
    """(repo id, revision or None) of hf://ORG/REPO[@REVISION]."""
    rest = source[len("hf://"):]
    repo, sep, revision = rest.partition("@")
    return repo, (revision if sep else None)


def split_https(source: str) -> tuple[str, str | None]:
    """(URL to get, expected SHA-256 hex or None) of https://HOST/PATH.tar.gz[#sha256=HEX]."""
    url, _, fragment = source.partition("#")
    key, sep, value = fragment.partition("=")
    return url, (value.lower() if sep and key == "sha256" else None)


def allowed(source: str, prefixes: list[str]) -> bool:
    """Whether a remote source lies under one of the allow-listed prefixes (an empty list allows any)."""
    return not prefixes or any(source.startswith(p) for p in prefixes)
