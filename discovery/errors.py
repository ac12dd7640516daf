"""One exception class per way discovery can fail, so that each edge handles exactly its own kind.

Everything derives from DiscoveryError; callers that only want to log-and-retry
an etcd hiccup catch EtcdUnavailable, never a bare Exception.
"""

from __future__ import annotations


class DiscoveryError(Exception):
    """Base of every discovery failure."""


class EtcdUnavailable(DiscoveryError):
    """No etcd endpoint answered (down, restarting, partitioned, or timed out)."""


class EtcdAuthFailed(DiscoveryError):
    """etcd refused the user/password or the client certificate."""


class LeaseLost(DiscoveryError):
    """A lease expired or was revoked while its owner still needed it."""


class Compacted(DiscoveryError):
    """A watch asked for history that etcd already compacted away; the caller must re-list."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted below {compact_revision}")
        self.compact_revision = compact_revision


class NotLeader(DiscoveryError):
    """A leader-only operation was attempted by a candidate that is not (or no longer) the leader."""


class FencingFailed(NotLeader):
    """A fenced write was refused: the leader key or the placement header changed since this writer last saw it."""


class MalformedRecord(DiscoveryError):
    """A value in etcd does not decode as the record its key promises (another writer, an old version)."""


class WorkerUnreachable(DiscoveryError):
    """A worker did not answer over HTTP, or answered with an error status."""


class WorkerNotVllm(DiscoveryError):
    """A worker answered, but not the way vLLM's OpenAI server does (no base model listed)."""
