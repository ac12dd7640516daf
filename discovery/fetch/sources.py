"""Downloads of one source into a staging directory: S3 (boto3), https tarballs (aiohttp), hf (huggingface_hub).

Credentials and endpoints come from the environment and the libraries' own
files (AWS_*, ~/.aws, HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE), never from the
catalog record; error details name the source and the library's error class,
never a credential. Blocking clients (boto3, huggingface_hub) run in a thread.

Forms:
- s3://BUCKET/PREFIX            every object under PREFIX/ is a file of the adapter (a directory upload)
- s3://BUCKET/KEY.tar.gz        one archive (.tar.gz, .tgz, .tar) holding the adapter
- https://HOST/PATH.tar.gz[#sha256=HEX]   one archive, checked against the digest when given
- hf://ORG/REPO[@REVISION]      a Hub snapshot
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import aiohttp
import msgspec

from discovery.fetch.layout import is_archive, split_hf, split_https, split_s3
from discovery.fetch.verify import FetchError, extract_archive
from router.core.records import scheme

CHUNK = 1 << 20
HfDownload = Callable[..., Any]


class SourceSettings(msgspec.Struct, frozen=True, kw_only=True):
    s3_endpoint_url: str | None = None
    """An S3-compatible endpoint (MinIO, Ceph, a local test server); None: AWS (or AWS_ENDPOINT_URL_S3)."""
    s3_region: str | None = None
    timeout_s: float = 600.0


async def download(source: str, staging: Path, settings: SourceSettings, max_bytes: int,
                   session: aiohttp.ClientSession, hf_download: HfDownload | None = None) -> None:
    """Fill `staging` with the adapter's files, or raise FetchError."""
    kind = scheme(source)
    if kind == "s3":
        await asyncio.to_thread(_s3, source, staging, settings, max_bytes)
    elif kind == "https":
        await _https(source, staging, settings, max_bytes, session)
    elif kind == "hf":
        await asyncio.to_thread(_hf, source, staging, hf_download)
    else:
        raise FetchError("bad_source", f"{kind}:// is not a remote source")


# -- S3 ---------------------------------------------------------------------------------------------
def _s3_client(settings: SourceSettings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(s3={"addressing_style": "path"} if settings.s3_endpoint_url else {},
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=10, read_timeout=60)
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
                        config=config)


def _s3(source: str, staging: Path, settings: SourceSettings, max_bytes: int) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(source)
    try:
        client = _s3_client(settings)
        if is_archive(key):
            archive = staging.with_name(staging.name + ".archive")
            try:
                _s3_object(client, bucket, key, archive, max_bytes)
                extract_archive(archive, staging, max_bytes)
            finally:
                archive.unlink(missing_ok=True)
            return
        prefix = key.rstrip("/") + "/"
        objects = [o for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                   for o in page.get("Contents", [])]
        files = [o for o in objects if not o["Key"].endswith("/")]
        if not files:
            raise FetchError("not_found", f"no objects under s3://{bucket}/{prefix}")
        total = sum(int(o["Size"]) for o in files)
        if total > max_bytes:
            raise FetchError("too_large", f"{total} bytes under s3://{bucket}/{prefix}, over the limit of "
                             f"{max_bytes}")
        for obj in files:
            rel = PurePosixPath(obj["Key"][len(prefix):])
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise FetchError("unsafe_key", f"object {obj['Key']!r} points outside the adapter directory")
            dest = staging.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            _s3_object(client, bucket, obj["Key"], dest, max_bytes)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise FetchError("not_found", f"{source}: {code}") from None
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise FetchError("access_denied", f"{source}: {code}", permanent=False) from None
        raise FetchError("s3_error", f"{source}: {code or type(exc).__name__}", permanent=False) from None
    except BotoCoreError as exc:
        raise FetchError("unreachable", f"{source}: {type(exc).__name__}", permanent=False) from None


def _s3_object(client: Any, bucket: str, key: str, dest: Path, max_bytes: int) -> None:
    """One object to `dest`, checked against its length and, for a single-part upload, its ETag (MD5)."""
    resp = client.get_object(Bucket=bucket, Key=key)
    expected = int(resp["ContentLength"])
    etag = str(resp.get("ETag", "")).strip('"')
    if expected > max_bytes:
        raise FetchError("too_large", f"s3://{bucket}/{key} is {expected} bytes, over the limit of {max_bytes}")
    md5 = hashlib.md5(usedforsecurity=False)
    got = 0
    with dest.open("wb") as out:
        for chunk in resp["Body"].iter_chunks(CHUNK):
            got += len(chunk)
            if got > max_bytes:
                raise FetchError("too_large", f"s3://{bucket}/{key} sends over {max_bytes} bytes")
            md5.update(chunk)
            out.write(chunk)
    if got != expected:
        raise FetchError("partial", f"s3://{bucket}/{key}: got {got} of {expected} bytes", permanent=False)
    if etag and "-" not in etag and md5.hexdigest() != etag:
        raise FetchError("checksum_mismatch", f"s3://{bucket}/{key}: MD5 {md5.hexdigest()} is not its ETag {etag}",
                         permanent=False)


# -- https ------------------------------------------------------------------------------------------
async def _https(source: str, staging: Path, settings: SourceSettings, max_bytes: int,
                 session: aiohttp.ClientSession) -> None:
    url, sha256 = split_https(source)
    archive = staging.with_name(staging.name + ".archive")
    digest = hashlib.sha256()
    got = 0
    try:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=settings.timeout_s)) as resp:
                if resp.status in (401, 403, 404, 410):
                    raise FetchError("not_found" if resp.status in (404, 410) else "access_denied",
                                     f"{url}: HTTP {resp.status}", permanent=resp.status in (404, 410))
                if resp.status != 200:
                    raise FetchError("http_error", f"{url}: HTTP {resp.status}", permanent=False)
                if resp.content_length is not None and resp.content_length > max_bytes:
                    raise FetchError("too_large", f"{url} is {resp.content_length} bytes, over {max_bytes}")
                with archive.open("wb") as out:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        got += len(chunk)
                        if got > max_bytes:
                            raise FetchError("too_large", f"{url} sends over {max_bytes} bytes")
                        digest.update(chunk)
                        out.write(chunk)
                if resp.content_length is not None and got != resp.content_length:
                    raise FetchError("partial", f"{url}: got {got} of {resp.content_length} bytes",
                                     permanent=False)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError("unreachable", f"{url}: {type(exc).__name__}", permanent=False) from None
        if sha256 is not None and digest.hexdigest() != sha256:
            raise FetchError("checksum_mismatch", f"{url}: SHA-256 {digest.hexdigest()} is not {sha256}")
        await asyncio.to_thread(extract_archive, archive, staging, max_bytes)
    finally:
        archive.unlink(missing_ok=True)


# -- Hugging Face -----------------------------------------------------------------------------------
def _hf(source: str, staging: Path, hf_download: HfDownload | None) -> None:
    """A snapshot into `staging` through huggingface_hub, which honours HF_ENDPOINT, HF_TOKEN and
    HF_HUB_OFFLINE (offline: only what its own cache already has)."""
    from huggingface_hub import errors, snapshot_download

    repo, revision = split_hf(source)
    fetch = hf_download or snapshot_download
    gone = (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.GatedRepoError)
    try:
        fetch(repo_id=repo, revision=revision, local_dir=str(staging))
    except (errors.LocalEntryNotFoundError, errors.HfHubHTTPError, OSError) as exc:
        # snapshot_download reports a refused API call as "not in the local cache either", the refusal
        # being its cause: a missing repo or revision is final, anything else is worth another try.
        cause = exc if isinstance(exc, gone) else exc.__cause__
        if isinstance(cause, gone):
            raise FetchError("not_found", f"{source}: {type(cause).__name__}") from None
        raise FetchError("unreachable", f"{source}: {type(exc).__name__}", permanent=False) from None
    marker = staging / ".cache"
    if marker.is_dir():
        shutil.rmtree(marker)
