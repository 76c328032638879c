"""Read a job's `progress.json` (and whether `manifest.json` exists) from its output location.

`s3://` goes through boto3 with the credentials of the job's `spec.output.secretRef` Secret
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_ENDPOINT_URL`,
`AWS_REGION`); keys the Secret lacks, or jobs without a Secret, use the operator's own
environment (e.g. IRSA). Local paths are read directly (tests, single-node setups).
Nothing here touches the Kubernetes API: the Secret comes through a callable.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sftjob_api.layout import MANIFEST_FILE, PROGRESS_FILE, job_output_uri
from sftjob_api.progress import ProgressFile
from sftjob_api.types import SFTJob
from sftjob_operator.status import ProgressSnapshot

SecretReader = Callable[[str, str], Awaitable[dict[str, str] | None]]
"""`(namespace, name) -> decoded Secret data | None`."""

# Secrets are re-read at most this often (a rotated key is picked up within a minute).
SECRET_TTL_SECONDS = 60.0
_AWS_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_EXPORT_PHASES = ("Exporting", "Succeeded")


class StorageReadError(Exception):
    """Reading the output location failed; the message names the URI, never a credential."""


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


class ProgressReader:
    """Reads progress snapshots; caches Secrets (briefly) and S3 clients (per credential set)."""

    def __init__(self, read_secret: SecretReader, clock: Callable[[], float] = time.monotonic) -> None:
        self._read_secret = read_secret
        self._clock = clock
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str] | None]] = {}
        self._clients: dict[str, Any] = {}

    async def read(self, job: SFTJob, *, manifest: bool = False) -> ProgressSnapshot:
        """Read `progress.json`; check `manifest.json` when asked or when the trainer is exporting.

        Args:
            job: The job (its output URI, name, namespace and output Secret).
            manifest: Check for `manifest.json` whatever the progress says.

        Returns:
            The snapshot; `problem` says why progress could not be read (a missing file is no problem).
        """
        base = job_output_uri(job.spec.output.uri, job.name, job.metadata.namespace)
        try:
            if base.startswith("s3://"):
                client = await self._s3_client(job)
                raw = await asyncio.to_thread(_s3_get, client, f"{base}/{PROGRESS_FILE}")
            else:
                raw = await asyncio.to_thread(_local_get, f"{base}/{PROGRESS_FILE}")
        except StorageReadError as err:
            return ProgressSnapshot(problem=str(err))
        progress: ProgressFile | None = None
        problem = None
        if raw is not None:
            try:
                progress = ProgressFile.model_validate(json.loads(raw), by_alias=True)
            except (ValueError, ValidationError) as err:
                problem = f"{base}/{PROGRESS_FILE}: not a valid progress file: {str(err).splitlines()[0]}"
        complete = False
        if manifest or (progress is not None and progress.phase in _EXPORT_PHASES):
            try:
                if base.startswith("s3://"):
                    complete = await asyncio.to_thread(
                        _s3_exists, await self._s3_client(job), f"{base}/{MANIFEST_FILE}"
                    )
                else:
                    complete = Path(f"{base}/{MANIFEST_FILE}").is_file()
            except StorageReadError as err:
                problem = str(err)
        return ProgressSnapshot(progress=progress, output_complete=complete, problem=problem)

    async def _credentials(self, job: SFTJob) -> dict[str, str]:
        ref = job.spec.output.secret_ref
        namespace = job.metadata.namespace
        if ref is None or namespace is None:
            return {}
        key = (namespace, ref.name)
        cached = self._secrets.get(key)
        now = self._clock()
        if cached is None or cached[0] <= now:
            data = await self._read_secret(namespace, ref.name)
            cached = (now + SECRET_TTL_SECONDS, data)
            self._secrets[key] = cached
        return {k: v for k, v in (cached[1] or {}).items() if k in _AWS_KEYS}

    async def _s3_client(self, job: SFTJob) -> Any:
        credentials = await self._credentials(job)
        fingerprint = hashlib.sha256(json.dumps(credentials, sort_keys=True).encode()).hexdigest()
        client = self._clients.get(fingerprint)
        if client is None:
            client = await asyncio.to_thread(_make_s3_client, credentials)
            self._clients[fingerprint] = client
        return client


def _make_s3_client(credentials: dict[str, str]) -> Any:
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {
        "config": Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=15)
    }
    if credentials.get("AWS_ACCESS_KEY_ID") and credentials.get("AWS_SECRET_ACCESS_KEY"):
        kwargs["aws_access_key_id"] = credentials["AWS_ACCESS_KEY_ID"]
        kwargs["aws_secret_access_key"] = credentials["AWS_SECRET_ACCESS_KEY"]
        if credentials.get("AWS_SESSION_TOKEN"):
            kwargs["aws_session_token"] = credentials["AWS_SESSION_TOKEN"]
    endpoint = credentials.get("AWS_ENDPOINT_URL_S3") or credentials.get("AWS_ENDPOINT_URL")
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    region = credentials.get("AWS_REGION") or credentials.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region_name"] = region
    return boto3.session.Session().client("s3", **kwargs)


def _describe(err: Exception, uri: str) -> StorageReadError:
    code = ""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code", ""))
    return StorageReadError(f"{uri}: {code or type(err).__name__}")


def _s3_get(client: Any, uri: str) -> bytes | None:
    bucket, key = _split_s3(uri)
    try:
        body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as err:
        if _is_not_found(err):
            return None
        raise _describe(err, uri) from None
    return body


def _s3_exists(client: Any, uri: str) -> bool:
    bucket, key = _split_s3(uri)
    try:
        client.head_object(Bucket=bucket, Key=key)
    except Exception as err:
        if _is_not_found(err):
            return False
        raise _describe(err, uri) from None
    return True


def _is_not_found(err: Exception) -> bool:
    response = getattr(err, "response", None)
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    return code in ("NoSuchKey", "404", "NotFound")


def _local_get(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:
        raise StorageReadError(f"{path}: {err.strerror or type(err).__name__}") from None
