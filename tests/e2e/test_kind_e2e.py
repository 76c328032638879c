"""The kind end-to-end test, and everything of it that runs without Docker.

The full run (`SFTJOB_E2E=1`) needs a Docker engine, kind, kubectl and helm; without them it is
skipped with a reason naming what is missing. The dry run, the in-cluster helper scripts (against
the moto S3 server) and the manifests it applies are tested everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "e2e" / "kind-e2e.sh"
WORKFLOW = REPO / ".github" / "workflows" / "e2e.yaml"
STEPS = [
    "create the kind cluster",
    "build the operator and trainer images",
    "load both images into the kind node",
    "install KubeRay 1.7.0",
    "install MinIO and seed it",
    "install the sftjob chart",
    "apply the CPU-only tiny SFTJob and wait for Succeeded",
    "check the artifacts in MinIO",
]


def _bare_path(tmp_path: Path) -> str:
    """A PATH with only what the script needs besides Docker, kind, kubectl and helm."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "sed"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def _dry_run(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": _bare_path(tmp_path), "HOME": str(tmp_path)}
    return subprocess.run([str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, check=False,
                          cwd=tmp_path)


def test_dry_run_prints_every_step_without_docker(tmp_path: Path) -> None:
    done = _dry_run(tmp_path)
    assert done.returncode == 0, done.stderr
    headers = re.findall(r"^==> step (\d+): (.*)$", done.stdout, re.MULTILINE)
    assert [int(n) for n, _ in headers] == list(range(1, len(STEPS) + 1))
    for (_, header), expected in zip(headers, STEPS, strict=True):
        assert header.startswith(expected), header
    assert done.stdout.rstrip().endswith(f"kind-e2e: {len(STEPS)} steps printed")


def test_dry_run_commands_name_real_files_and_pinned_versions(tmp_path: Path) -> None:
    commands = [line[2:] for line in _dry_run(tmp_path).stdout.splitlines() if line.startswith("+ ")]
    pattern = r"(?:-f|--from-file=) ?((?:tests|helm)/\S+|Dockerfile|\S+/Dockerfile)"
    files = [Path(m) for c in commands for m in re.findall(pattern, c)]
    assert files, commands
    for path in files:
        assert (REPO / path).is_file(), path
    kuberay = next(c for c in commands if "kuberay/kuberay-operator" in c)
    # The KubeRay the e2e installs is the chart's optional dependency, the release the RayJob schema comes from.
    dependency = yaml.safe_load((REPO / "helm" / "Chart.yaml").read_text())["dependencies"][0]
    assert (dependency["name"], dependency["version"]) == ("kuberay-operator", "1.7.0")
    assert f"--version {dependency['version']}" in kuberay
    chart = next(c for c in commands if c.startswith("helm upgrade --install sftjob helm"))
    assert "image.pullPolicy=Never" in chart and "trainer.image=sftjob-trainer:e2e" in chart
    trainer_build = next(c for c in commands if "trainer_image/Dockerfile" in c)
    assert "REQUIRE_CUDA=0" in trainer_build and "-cpu" in trainer_build


def test_unknown_argument_is_refused(tmp_path: Path) -> None:
    env = {"PATH": _bare_path(tmp_path)}
    done = subprocess.run([str(SCRIPT), "--fast"], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 2
    assert "unknown argument --fast" in done.stderr


def test_missing_tools_are_named(tmp_path: Path) -> None:
    env = {"PATH": _bare_path(tmp_path)}
    done = subprocess.run([str(SCRIPT)], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 3
    assert "kind-e2e: missing: docker kind kubectl helm" in done.stderr


def test_jobs_use_the_scripts_and_the_credentials_the_sftjob_uses() -> None:
    job = yaml.safe_load((REPO / "tests" / "e2e" / "sftjob-tiny.yaml").read_text())
    seed = yaml.safe_load((REPO / "tests" / "e2e" / "seed-job.yaml").read_text())
    check = yaml.safe_load((REPO / "tests" / "e2e" / "check-job.yaml").read_text())
    secret = job["spec"]["output"]["secretRef"]["name"]
    for manifest, script in ((seed, "seed_storage.py"), (check, "check_artifacts.py")):
        container = manifest["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][1] == f"/e2e/{script}"
        assert (REPO / "tests" / "e2e" / script).is_file()
        assert container["envFrom"] == [{"secretRef": {"name": secret}}]
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    out = job["spec"]["output"]["uri"]
    assert check["spec"]["template"]["spec"]["containers"][0]["command"][2] == f"{out}/{namespace}/{name}"
    assert job["spec"]["compute"]["gpusPerWorker"] == 0


def test_workflow_runs_the_script_on_a_runner_with_docker() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = [s for job in workflow["jobs"].values() for s in job["steps"]]
    runs = " ".join(s.get("run", "") for s in steps)
    assert "tests/e2e/test_kind_e2e.py" in runs
    env = {k: v for s in steps for k, v in (s.get("env") or {}).items()}
    assert env.get("SFTJOB_E2E") == "1"
    assert any("kind" in s.get("uses", "") for s in steps)


def _seed_and_output(s3_server: Any, bucket: str) -> str:
    from tests.e2e.seed_storage import seed

    written = seed(f"s3://{bucket}")
    assert f"s3://{bucket}/data/train.jsonl" in written
    assert f"s3://{bucket}/models/tiny/config.json" in written
    # A job output the way the trainer leaves it: files, then manifest.json vouching for them.
    job_uri = f"s3://{bucket}/out/sftjob-e2e/tiny-lora"
    client = s3_server.client()
    files = {"adapter/adapter_config.json": b'{"r": 4}', "adapter/adapter_model.safetensors": b"weights",
             "metrics.jsonl": b'{"step": 1}\n'}
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"out/sftjob-e2e/tiny-lora/{name}", Body=data)
    client.put_object(Bucket=bucket, Key="out/sftjob-e2e/tiny-lora/progress.json", Body=b'{"phase": "Succeeded"}')
    entries = {name: {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for name, d in files.items()}
    client.put_object(Bucket=bucket, Key="out/sftjob-e2e/tiny-lora/manifest.json", Body=json.dumps({"files": entries}))
    return job_uri


def test_seed_and_check_scripts_against_s3(s3_env: Any) -> None:
    from tests.e2e.check_artifacts import check

    job_uri = _seed_and_output(s3_env, "e2e-scripts-ok")
    assert check(job_uri) == []
    client = s3_env.client()
    client.put_object(Bucket="e2e-scripts-ok", Key="out/sftjob-e2e/tiny-lora/adapter/adapter_model.safetensors",
                      Body=b"tampered")
    assert check(job_uri) == ["adapter/adapter_model.safetensors: content differs from manifest.json"]
    client.delete_object(Bucket="e2e-scripts-ok", Key="out/sftjob-e2e/tiny-lora/manifest.json")
    assert check(job_uri) == [f"{job_uri}/manifest.json is missing: the trainer did not finish its output"]


def _e2e_missing() -> list[str]:
    missing = [tool for tool in ("docker", "kind", "kubectl", "helm") if shutil.which(tool) is None]
    if "docker" not in missing:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
        if info.returncode != 0:
            missing.append("a running Docker engine (`docker info` fails)")
    return missing


@pytest.mark.e2e
def test_kind_end_to_end() -> None:
    if os.environ.get("SFTJOB_E2E") != "1":
        pytest.skip("kind e2e is opt-in: set SFTJOB_E2E=1 (needs a Docker engine, kind, kubectl and helm)")
    missing = _e2e_missing()
    if missing:
        pytest.skip(f"kind e2e needs what this machine lacks: {', '.join(missing)}")
    done = subprocess.run([str(SCRIPT)], cwd=REPO, check=False)
    assert done.returncode == 0
