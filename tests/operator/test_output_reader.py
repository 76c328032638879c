"""Reading progress.json and manifest.json: local paths, S3 with a job's Secret, S3 with the operator's environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sftjob_api.types import SFTJob, parse_sftjob
from sftjob_operator.output_reader import ProgressReader
from support.operator_env import progress_document


def job(output: dict[str, Any]) -> SFTJob:
    return parse_sftjob(
        {
            "apiVersion": "sftjob.dev/v1alpha1",
            "kind": "SFTJob",
            "metadata": {"name": "j", "namespace": "ns"},
            "spec": {
                "model": {"source": "hf://org/m"},
                "dataset": {"train": {"uri": "/data/t.jsonl"}},
                "output": output,
            },
        }
    )


class Secrets:
    """A fake Secret source that counts reads."""

    def __init__(self, data: dict[str, dict[str, str]]) -> None:
        self.data = data
        self.reads = 0

    async def __call__(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads += 1
        return self.data.get(f"{namespace}/{name}")


async def test_local_progress_and_manifest(tmp_path: Path) -> None:
    reader = ProgressReader(Secrets({}))
    spec = job({"uri": str(tmp_path)})
    assert (await reader.read(spec)).progress is None  # nothing written yet: not a problem
    out = tmp_path / "ns" / "j"
    out.mkdir(parents=True)
    (out / "progress.json").write_text(json.dumps(progress_document("Running", step=3, total=10)))
    snapshot = await reader.read(spec)
    assert snapshot.progress is not None and snapshot.progress.step == 3
    assert snapshot.problem is None and not snapshot.output_complete
    (out / "progress.json").write_text(json.dumps(progress_document("Succeeded", step=10, total=10)))
    assert not (await reader.read(spec)).output_complete
    (out / "manifest.json").write_text("{}")
    assert (await reader.read(spec)).output_complete
    assert (await reader.read(spec, manifest=True)).output_complete


async def test_a_malformed_progress_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "ns" / "j"
    out.mkdir(parents=True)
    (out / "progress.json").write_text('{"phase": "Dancing"}')
    snapshot = await ProgressReader(Secrets({})).read(job({"uri": str(tmp_path)}))
    assert snapshot.progress is None and snapshot.problem is not None and "progress.json" in snapshot.problem
    (out / "progress.json").write_text("{not json")
    assert (await ProgressReader(Secrets({})).read(job({"uri": str(tmp_path)}))).problem is not None


async def test_s3_with_the_jobs_secret(s3_server: Any) -> None:
    bucket = s3_server.create_bucket("progress-secret")
    s3_server.client().put_object(
        Bucket="progress-secret",
        Key="runs/ns/j/progress.json",
        Body=json.dumps(progress_document("Exporting", step=7)).encode(),
    )
    s3_server.client().put_object(Bucket="progress-secret", Key="runs/ns/j/manifest.json", Body=b"{}")
    secrets = Secrets(
        {
            "ns/out": {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_ENDPOINT_URL": s3_server.endpoint,
                "AWS_REGION": "us-east-1",
            }
        }
    )
    reader = ProgressReader(secrets)
    spec = job({"uri": f"{bucket}/runs", "secretRef": {"name": "out"}})
    snapshot = await reader.read(spec)
    assert snapshot.problem is None
    assert snapshot.progress is not None and snapshot.progress.step == 7
    assert snapshot.output_complete  # the trainer is exporting: the manifest is looked for
    await reader.read(spec)
    assert secrets.reads == 1  # the Secret is cached (re-read after SECRET_TTL_SECONDS)


async def test_s3_with_the_operators_environment(s3_env: Any) -> None:
    bucket = s3_env.create_bucket("progress-env")
    s3_env.client().put_object(
        Bucket="progress-env", Key="ns/j/progress.json", Body=json.dumps(progress_document(step=2)).encode()
    )
    snapshot = await ProgressReader(Secrets({})).read(job({"uri": bucket}))
    assert snapshot.progress is not None and snapshot.progress.step == 2


async def test_s3_errors_name_the_file_not_the_credentials(s3_server: Any) -> None:
    secrets = Secrets(
        {
            "ns/out": {
                "AWS_ACCESS_KEY_ID": "id",
                "AWS_SECRET_ACCESS_KEY": "very-secret",
                "AWS_ENDPOINT_URL": s3_server.endpoint,
            }
        }
    )
    snapshot = await ProgressReader(secrets).read(
        job({"uri": "s3://no-such-bucket-here/x", "secretRef": {"name": "out"}})
    )
    assert snapshot.problem is not None and "s3://no-such-bucket-here/x/ns/j/progress.json" in snapshot.problem
    assert "very-secret" not in snapshot.problem
