"""The real kubectl against the emulator: `kubectl apply` of every example, `kubectl get sft` with printer columns."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.operator_env import REPO, Api, OutputWriter, wait_for

KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

pytestmark = pytest.mark.skipif(not Path(KUBECTL).is_file(), reason="kubectl is not installed")


async def kubectl(kubeconfig: Path, *args: str) -> str:
    """Run kubectl (in a thread: the operator shares this event loop); fail on a non-zero exit."""
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    result = await asyncio.to_thread(
        subprocess.run, [KUBECTL, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
    assert "Warning" not in result.stderr, result.stderr
    return result.stdout


def _examples() -> list[tuple[str, str]]:
    found = []
    for path in EXAMPLES:
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "SFTJob":
                found.append((document["metadata"].get("namespace", "default"), document["metadata"]["name"]))
    return found


async def test_kubectl_apply_examples_and_get_shows_printer_columns(
    k8s: Any, api: Api, operator: Any, s3_env: Any
) -> None:
    assert EXAMPLES, "no examples/*.yaml"
    jobs = _examples()
    # The lora-chat example trains into s3://ml-models/sft; serve it from moto (the operator reads with its env).
    s3_env.create_bucket("ml-models")
    async with operator():
        for path in EXAMPLES:
            out = await kubectl(k8s.kubeconfig, "apply", "--validate=false", "-f", str(path))
            assert "created" in out
        for namespace, name in jobs:
            await wait_for(lambda ns=namespace, n=name: _phase(api, ns, n), what=f"{namespace}/{name} has a phase")

        await api.play_kuberay(
            "ml-team", "support-bot-lora-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
        )
        out_dir = OutputWriter("s3://ml-models/sft/ml-team/support-bot-lora", s3_env.client())
        await out_dir.progress(step=40, total=160, loss=1.25, estimatedFinishTime="2099-01-01T00:00:00Z")
        await wait_for(lambda: _step(api, "ml-team", "support-bot-lora", 40), what="progress in the status")

        table = await kubectl(k8s.kubeconfig, "get", "sft", "--all-namespaces")
        wide = await kubectl(k8s.kubeconfig, "get", "sft", "-n", "ml-team", "-o", "wide")

        for path in EXAMPLES:
            await kubectl(k8s.kubeconfig, "delete", "--wait=false", "-f", str(path))
        for namespace, name in jobs:
            await wait_for(lambda ns=namespace, n=name: _gone(api, ns, n), what=f"{namespace}/{name} deleted")

    header, *rows = table.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "PHASE", "METHOD", "PROGRESS", "LOSS", "ETA", "SCORE", "AGE"]
    assert sorted(row.split()[1] for row in rows) == sorted(name for _, name in jobs)
    running = next(row.split() for row in rows if row.split()[1] == "support-bot-lora")
    assert running[2:6] == ["Running", "lora", "25", "1.25"]
    assert all(row.split()[2] in ("Pending", "Running") for row in rows)

    wide_header, *wide_rows = wide.splitlines()
    assert wide_header.split() == [
        "NAME",
        "PHASE",
        "METHOD",
        "PROGRESS",
        "LOSS",
        "ETA",
        "SCORE",
        "AGE",
        "MODEL",
        "STEP",
        "EVAL",
        "ATTEMPT",
        "RAYJOB",
    ]
    wide_row = next(row.split() for row in wide_rows if row.split()[0] == "support-bot-lora")
    # MODEL, STEP, (EVAL: no evaluation yet, an empty cell), ATTEMPT, RAYJOB
    assert wide_row[-4:] == ["hf://Qwen/Qwen2.5-0.5B-Instruct", "40", "1", "support-bot-lora-a1"]


async def _phase(api: Api, namespace: str, name: str) -> str | None:
    body = await api.get_sftjob(namespace, name)
    return ((body or {}).get("status") or {}).get("phase")


async def _step(api: Api, namespace: str, name: str, step: int) -> bool:
    body = await api.get_sftjob(namespace, name) or {}
    return ((body.get("status") or {}).get("progress") or {}).get("step") == step


async def _gone(api: Api, namespace: str, name: str) -> bool:
    return await api.get_sftjob(namespace, name) is None
