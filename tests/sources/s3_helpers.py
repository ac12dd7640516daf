"""A real S3 API server's client side for the tests: uploads of real adapter files and archives."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from discovery.ports import free_port
from router.localfleet import make_adapter_dir
from router.procs import ManagedProcess

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret-never-logged",
               "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "adapters"


class S3:
    def __init__(self, endpoint: str) -> None:
        import boto3

        self.endpoint = endpoint
        self.client: Any = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                                        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
        self.client.create_bucket(Bucket=BUCKET)

    def upload_dir(self, local: Path, prefix: str) -> str:
        """Every file of `local` under s3://adapters/PREFIX/; the source URI."""
        for path in sorted(local.rglob("*")):
            if path.is_file():
                self.client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(local)}",
                                       Body=path.read_bytes())
        return f"s3://{BUCKET}/{prefix}"

    def put(self, key: str, body: bytes) -> str:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=body)
        return f"s3://{BUCKET}/{key}"

    def delete_prefix(self, prefix: str) -> None:
        listing = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        for obj in listing.get("Contents", []):
            self.client.delete_object(Bucket=BUCKET, Key=obj["Key"])


def adapter_files(root: Path, name: str, rank: int = 8, weights: int = 64 * 1024) -> Path:
    """An adapter directory with its config and `weights` bytes of (fake) weights."""
    path = make_adapter_dir(root, name, rank)
    (path / "adapter_model.safetensors").write_bytes(os.urandom(weights))
    return path


def tarball(members: dict[str, bytes], *, symlink: tuple[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink is not None:
            info = tarfile.TarInfo(symlink[0])
            info.type = tarfile.SYMTYPE
            info.linkname = symlink[1]
            tar.addfile(info)
    return out.getvalue()


def adapter_config(rank: int = 8) -> bytes:
    return json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
                       "target_modules": ["q_proj"], "base_model_name_or_path": "sim"}).encode()


@contextmanager
def moto_server(log_dir: Path) -> Iterator[S3]:
    """moto's standalone S3 server as its own process on a free loopback port, with the bucket made."""
    port = free_port()
    moto = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = ManagedProcess([moto, "-H", "127.0.0.1", "-p", str(port)],
                          health_url=f"http://127.0.0.1:{port}/moto-api/", log_path=log_dir / "moto.log")
    proc.start(timeout_s=60)
    try:
        yield S3(f"http://127.0.0.1:{port}")
    finally:
        proc.kill()


def self_signed(out: Path) -> tuple[Path, Path]:
    """(cert, key) for 127.0.0.1, made here; a client trusts it through SSL_CERT_FILE."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = out / "cert.pem", out / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
