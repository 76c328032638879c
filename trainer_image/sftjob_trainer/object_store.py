"""Object storage: `s3://bucket/key` through boto3, or plain filesystem paths, behind one small API.

Endpoint, region and credentials come from the standard AWS environment variables
(`AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`), which the operator fills from the referenced Secrets. Uploads use
boto3's managed (multipart) transfer.

Every S3 operation is retried with bounded exponential backoff and gives up after a bounded time, so an
object store that stops answering ends the job with `StorageUnavailable` (retryable) instead of hanging it;
`retry_budget()` says how long at most, docs/trainer.md (Reliability) explains the numbers.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sftjob_api.codes import ErrorCode
from sftjob_trainer.trainer_error import TrainerError

T = TypeVar("T")

# HTTP attempts botocore makes per request ("standard" mode, with its own 50-100 ms jittered sleeps): the second
# one absorbs a pooled keep-alive connection the server had already closed, without our longer sleep.
REQUEST_ATTEMPTS = 2
# Sleeps (seconds) before the 2nd, 3rd... try of a whole operation after a transient failure (connection refused,
# dropped or timed out, 5xx, throttling). 6 tries in all; each sleep is drawn from [d/2, d] (jitter, so many
# workers do not retry in step), so an outage shorter than 15.5 s is always ridden out (an object store pod
# restarting, a load balancer failing over), and at most 31 s are spent sleeping before the job fails.
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)
NOT_FOUND = "NotFound"
"""`StorageError.code` of a missing file, object or prefix: the storage layer's own code, never a job's error
code, so every caller says what is missing (e.g. `DatasetUnreadable`, `ModelUnreadable`) or treats it as absent."""
# Scales RETRY_DELAYS_S; the reliability tests shrink the sleeps with it (the counts stay the same).
BACKOFF_SCALE_ENV = "SFTJOB_STORAGE_BACKOFF_SCALE"
# Seconds to open a TCP connection: object stores accept in milliseconds, even across a region; 5 s of silence
# means the endpoint is down or blackholed.
CONNECT_TIMEOUT_S = 5
# Seconds of socket silence while waiting for a response: S3 answers a PUT (a multipart part is 8 MiB) or a GET's
# first byte within seconds and keeps a long CompleteMultipartUpload alive with whitespace; 20 s of silence means
# a hung endpoint.
READ_TIMEOUT_S = 20
# S3 error codes that mean "busy, try again" (HTTP 5xx are retried whatever their code).
_THROTTLING = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed"})


def retry_budget() -> dict[str, float]:
    """The bounds of one storage operation's retries, before it fails with `StorageUnavailable`.

    Returns:
        `tries` (of the whole operation), `request_attempts` (HTTP attempts per try), `outage_ridden_s` (an outage
        shorter than this is always survived), `max_sleep_s` (the most all sleeps add up to) and `max_s` (the
        most the operation can take when every connection hangs: connect or read timeouts on every attempt,
        plus the sleeps; a refused or dropped connection fails at once, so only the sleeps count).
    """
    per_attempt = CONNECT_TIMEOUT_S + READ_TIMEOUT_S
    tries = len(RETRY_DELAYS_S) + 1
    return {
        "tries": tries,
        "request_attempts": REQUEST_ATTEMPTS,
        "outage_ridden_s": sum(RETRY_DELAYS_S) / 2,
        "max_sleep_s": sum(RETRY_DELAYS_S),
        "max_s": tries * REQUEST_ATTEMPTS * per_attempt + sum(RETRY_DELAYS_S),
    }


class StorageError(TrainerError):
    """A storage operation failed; `code` is an SFTJob error code (`NotFound` is internal: callers translate it).

    It is a `TrainerError`, so a storage failure anywhere (a worker's upload, the driver's export) ends the job
    with `phase: Failed` and its code (`StorageUnavailable` is retryable) instead of a traceback.
    """

    def __init__(self, code: str, message: str) -> None:
        """Create the error.

        Args:
            code: `NotFound`, `AccessDenied`, `MissingCredentials` or `StorageUnavailable`.
            message: The URI and what went wrong.
        """
        super().__init__(code, message)

    def __reduce__(self) -> tuple[Any, ...]:
        # Ray pickles worker exceptions to the driver: keep the type (TrainerError.__reduce__ would drop it).
        return (StorageError, (self.code, self.message))


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
    """A boto3 S3 client configured from the standard AWS environment variables, with bounded timeouts."""
    import boto3
    from botocore.config import Config

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client(
        "s3",
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") or None,
        region_name=region,
        # `total_max_attempts` counts the first attempt; botocore's `max_attempts` key would count retries only.
        config=Config(retries={"mode": "standard", "total_max_attempts": REQUEST_ATTEMPTS},
                      connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S),
    )


def _chain(err: BaseException) -> list[BaseException]:
    """`err` and the exceptions it was raised from (boto3 wraps upload failures in S3UploadFailedError)."""
    out: list[BaseException] = []
    item: BaseException | None = err
    while item is not None and item not in out:
        out.append(item)
        item = item.__cause__ or item.__context__
    return out


def is_transient(err: BaseException) -> bool:
    """Whether another try may succeed: a connection refused, dropped or timed out, a 5xx, or throttling."""
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    for item in _chain(err):
        if isinstance(item, ConnectionError | HTTPClientError):
            return True
        if isinstance(item, ClientError):
            status = int(item.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            return status >= 500 or item.response.get("Error", {}).get("Code", "") in _THROTTLING
    return False


def _translate(err: Exception, uri: str, tries: int = 1) -> StorageError:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(err, NoCredentialsError):
        return StorageError(
            ErrorCode.MISSING_CREDENTIALS,
            f"{uri}: no AWS credentials; reference a Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY",
        )
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NoSuchBucket", "NotFound"):
            return StorageError(NOT_FOUND, f"{uri}: not found")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(ErrorCode.ACCESS_DENIED, f"{uri}: access denied ({code}); check the referenced Secret")
    if is_transient(err):
        return StorageError(ErrorCode.STORAGE_UNAVAILABLE, f"{uri}: object storage not answering after {tries} tries "
                                                  f"({type(err).__name__}: {err})"[:1000])
    return StorageError(ErrorCode.STORAGE_UNAVAILABLE, f"{uri}: {err}"[:1000])


def with_retries(operation: Callable[[], T], uri: str) -> T:
    """Run one S3 operation, trying it again after transient failures (`RETRY_DELAYS_S`, jittered).

    Args:
        operation: The operation; it must be safe to repeat (whole-object PUTs and GETs are).
        uri: What it touches, for the error message.

    Returns:
        What the operation returned.

    Raises:
        StorageError: A permanent failure at once; a transient one after the last try (StorageUnavailable).
    """
    scale = float(os.environ.get(BACKOFF_SCALE_ENV) or 1.0)
    for tried, delay in enumerate((*RETRY_DELAYS_S, None), start=1):
        try:
            return operation()
        except Exception as err:
            if delay is None or not is_transient(err):
                raise _translate(err, uri, tried) from err
            # Jitter in [d/2, d]: the lower half keeps the guaranteed outage budget, the upper half spreads workers.
            time.sleep(scale * delay * (0.5 + random.random() / 2))  # noqa: S311 - jitter, not a secret
    raise AssertionError("unreachable: the last try raises or returns")


def read_bytes(uri: str) -> bytes:
    """The whole content of a file.

    Raises:
        StorageError: With code NotFound, AccessDenied, MissingCredentials or StorageUnavailable.
    """
    if not is_s3(uri):
        try:
            return Path(uri).read_bytes()
        except FileNotFoundError:
            raise StorageError(NOT_FOUND, f"{uri}: no such file") from None
        except IsADirectoryError:
            raise StorageError(NOT_FOUND, f"{uri}: is a directory, expected a file") from None
        except PermissionError:
            raise StorageError(ErrorCode.ACCESS_DENIED, f"{uri}: permission denied") from None
    loc = parse_s3(uri)

    def get() -> bytes:
        body: bytes = s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        return body

    return with_retries(get, uri)


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
    # A PUT replaces the object atomically: a reader sees the old or the new content, never a part.
    with_retries(lambda: s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=data), uri)


def exists(uri: str) -> bool:
    """Whether a file exists at `uri`."""
    if not is_s3(uri):
        return Path(uri).is_file()
    loc = parse_s3(uri)
    try:
        with_retries(lambda: s3_client().head_object(Bucket=loc.bucket, Key=loc.key), uri)
    except StorageError as err:
        if err.code == NOT_FOUND:
            return False
        raise
    return True


def delete_file(uri: str) -> bool:
    """Delete the file at `uri`; returns whether there was one."""
    if not is_s3(uri):
        try:
            Path(uri).unlink()
        except FileNotFoundError:
            return False
        except PermissionError:
            raise StorageError(ErrorCode.ACCESS_DENIED, f"{uri}: permission denied") from None
        return True
    if not exists(uri):
        return False
    loc = parse_s3(uri)
    with_retries(lambda: s3_client().delete_object(Bucket=loc.bucket, Key=loc.key), uri)
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

    def listing() -> list[str]:
        names: list[str] = []
        for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
            # Keys ending in "/" are directory markers (pyarrow, used by Ray Train, writes them), not files.
            names.extend(obj["Key"][len(prefix) :] for obj in page.get("Contents", []) if not obj["Key"].endswith("/"))
        return sorted(names)

    return with_retries(listing, uri)


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
        raise StorageError(NOT_FOUND, f"{uri}: no files under this prefix")
    for name in files:
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with_retries(partial(client.download_file, loc.bucket, loc.child(name).key, str(target)), join(uri, name))
    return destination


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(uri: str, destination: Path) -> Path:
    """Copy one file at `uri` to `destination` (its directory created); returns `destination`."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if not is_s3(uri):
        try:
            shutil.copyfile(uri, destination)
        except (FileNotFoundError, IsADirectoryError):
            raise StorageError(NOT_FOUND, f"{uri}: no such file") from None
        return destination
    loc = parse_s3(uri)
    with_retries(partial(s3_client().download_file, loc.bucket, loc.key, str(destination)), uri)
    return destination


def upload_file(path: Path, uri: str) -> None:
    """Copy one local file to `uri` (managed multipart transfer on S3; a failed try leaves no object behind)."""
    if not is_s3(uri):
        target = Path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return
    loc = parse_s3(uri)
    with_retries(lambda: s3_client().upload_file(str(path), loc.bucket, loc.key), uri)


def upload_dir(source: Path, uri: str) -> list[str]:
    """Copy every file under `source` to `uri`; returns the relative paths copied."""
    names = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
    for name in names:
        upload_file(source / name, join(uri, name))
    return names
