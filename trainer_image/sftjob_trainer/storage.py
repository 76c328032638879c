"""Object storage: `s3://bucket/key` through boto3, or plain filesystem paths, behind one small API.

Endpoint, region and credentials come from the standard AWS environment variables
(`AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`), which the operator fills from the referenced Secrets. Uploads use
boto3's managed (multipart) transfer.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# boto3 retries throttling and 5xx itself; "standard" mode adds backoff with jitter.
_RETRIES = {"max_attempts": 8, "mode": "standard"}


class StorageError(Exception):
    """A storage operation failed; `code` is an SFTJob error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class S3Location:
    """A parsed `s3://bucket/key` URI."""

    bucket: str
    key: str

    def child(self, name: str) -> S3Location:
        """The location `name` below this one."""
        return S3Location(self.bucket, f"{self.key.rstrip('/')}/{name}" if self.key else name)


def is_s3(uri: str) -> bool:
    """Whether `uri` is an `s3://` URI."""
    return uri.startswith("s3://")


def parse_s3(uri: str) -> S3Location:
    """Split `s3://bucket/key` into bucket and key."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    return S3Location(bucket, key)


def join(uri: str, *names: str) -> str:
    """Append path segments to a URI or path."""
    return "/".join([uri.rstrip("/"), *names])


def s3_client() -> Any:
    """A boto3 S3 client configured from the standard AWS environment variables."""
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or None,
        region_name=region,
        config=Config(retries=_RETRIES),
    )


def _translate(err: Exception, uri: str) -> StorageError:
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(err, NoCredentialsError):
        return StorageError(
            "MissingCredentials",
            f"{uri}: no AWS credentials; reference a Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        )
    if isinstance(err, EndpointConnectionError):
        return StorageError("StorageUnavailable", f"{uri}: object storage unreachable: {err}")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket", "NotFound"):
            return StorageError("NotFound", f"{uri}: not found")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError("AccessDenied", f"{uri}: access denied ({code}); check the referenced Secret")
        return StorageError("StorageUnavailable", f"{uri}: {code or err}")
    return StorageError("StorageUnavailable", f"{uri}: {err}")


def read_bytes(uri: str) -> bytes:
    """The whole content of a file.

    Raises:
        StorageError: With code NotFound, AccessDenied, MissingCredentials or StorageUnavailable.
    """
    if not is_s3(uri):
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError:
            raise StorageError("NotFound", f"{uri}: no such file") from None
        except IsADirectoryError:
            raise StorageError("NotFound", f"{uri}: is a directory, expected a file") from None
        except PermissionError:
            raise StorageError("AccessDenied", f"{uri}: permission denied") from None
    loc = parse_s3(uri)
    try:
        body: bytes = s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    except Exception as err:
        raise _translate(err, uri) from err
    return body


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file; on a filesystem the file is replaced atomically (write then rename)."""
    if not is_s3(uri):
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        tmp.replace(path)
        return
    loc = parse_s3(uri)
    try:
        s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data)  # a PUT replaces atomically
    except Exception as err:
        raise _translate(err, uri) from err


def exists(uri: str) -> bool:
    """Whether a file exists at `uri`."""
    if not is_s3(uri):
        return Path(uri).is_file()
    loc = parse_s3(uri)
    try:
        s3_client().head_object(Bucket=loc.bucket, Key=loc.key)
    except Exception as err:
        translated = _translate(err, uri)
        if translated.code == "NotFound":
            return False
        raise translated from err
    return True


def list_files(uri: str) -> list[str]:
    """Relative paths of every file under a directory URI, sorted."""
    if not is_s3(uri):
        root = Path(uri)
        if not root.is_dir():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    loc = parse_s3(uri)
    prefix = loc.key.rstrip("/") + "/" if loc.key else ""
    names: list[str] = []
    try:
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=loc.bucket, Prefix=prefix):
            # Keys ending in "/" are directory markers (pyarrow, used by Ray Train, writes them), not files.
            names.extend(obj["Key"][len(prefix) :] for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))
    except Exception as err:
        raise _translate(err, uri) from err
    return sorted(names)


def download_dir(uri: str, destination: Path) -> Path:
    """Copy every file under `uri` into `destination` (created); returns `destination`."""
    destination.mkdir(parents=True, exist_ok=True)
    if not is_s3(uri):
        shutil.copytree(uri, destination, dirs_exist_ok=True)
        return destination
    loc = parse_s3(uri)
    client = s3_client()
    files = list_files(uri)
    if not files:
        raise StorageError("NotFound", f"{uri}: no files under this prefix")
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            client.download_file(loc.bucket, loc.child(name).key, str(target))
        except Exception as err:
            raise _translate(err, join(uri, name)) from err
    return destination


def upload_file(path: Path, uri: str) -> None:
    """Copy one local file to `uri` (managed multipart transfer on S3)."""
    if not is_s3(uri):
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return
    loc = parse_s3(uri)
    try:
        s3_client().upload_file(str(path), loc.bucket, loc.key)
    except Exception as err:
        raise _translate(err, uri) from err


def upload_dir(source: Path, uri: str) -> list[str]:
    """Copy every file under `source` to `uri`; returns the relative paths copied."""
    names = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
    for name in names:
        upload_file(source / name, join(uri, name))
    return names
