"""What makes a downloaded directory an adapter vLLM may load, and how archives are unpacked safely.

Everything here runs on the staging directory before the one rename that
publishes an entry, so a refused download never becomes visible to vLLM.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path


class FetchError(Exception):
    """A fetch that did not produce an entry; `permanent` ones are not retried for the same source."""

    def __init__(self, reason: str, detail: str, *, permanent: bool = True) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.permanent = permanent


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def check_adapter(root: Path, max_rank: int, max_bytes: int) -> int:
    """The adapter's size in bytes, or FetchError: too large, no/bad adapter_config.json, rank too high,
    or a symlink (a link could point vLLM at any file on the worker)."""
    for path in root.rglob("*"):
        if path.is_symlink():
            raise FetchError("unsafe_link", f"{path.relative_to(root)} is a symbolic link")
    size = tree_bytes(root)
    if size > max_bytes:
        raise FetchError("too_large", f"{size} bytes, over the limit of {max_bytes}")
    config = root / "adapter_config.json"
    if not config.is_file():
        raise FetchError("bad_adapter", "no adapter_config.json at the top of the adapter")
    try:
        parsed = json.loads(config.read_text())
        rank = int(parsed.get("r", 0)) if isinstance(parsed, dict) else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise FetchError("bad_adapter", f"adapter_config.json does not parse: {exc}") from None
    if rank is None:
        raise FetchError("bad_adapter", "adapter_config.json is not a JSON object")
    if rank > max_rank:
        raise FetchError("rank_too_high", f"rank {rank} is over the worker's max_lora_rank {max_rank}")
    return size


def extract_archive(archive: Path, dest: Path, max_bytes: int) -> None:
    """Unpack a tar(.gz) into `dest`, refusing members that are absolute, climb out with '..', are links
    or devices, or would unpack to more than `max_bytes`. A single top-level directory is the adapter."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            total = 0
            for m in members:
                name = m.name
                if name.startswith("/") or os.path.isabs(name) or ".." in Path(name).parts:
                    raise FetchError("unsafe_archive", f"member {name!r} points outside the adapter directory")
                if not (m.isfile() or m.isdir()):
                    raise FetchError("unsafe_archive", f"member {name!r} is a link or special file")
                total += m.size
                if total > max_bytes:
                    raise FetchError("too_large", f"the archive unpacks to over {max_bytes} bytes")
            tar.extractall(dest, members=members, filter="data")
    except tarfile.TarError as exc:
        raise FetchError("corrupt_archive", f"{type(exc).__name__}: {exc}") from None
    except EOFError:
        raise FetchError("corrupt_archive", "the archive ends early (partial object)") from None
    tops = list(dest.iterdir())
    if len(tops) == 1 and tops[0].is_dir() and not (dest / "adapter_config.json").exists():
        top = tops[0].rename(dest / ".unpacked-top")
        for child in list(top.iterdir()):
            child.rename(dest / child.name)
        top.rmdir()
