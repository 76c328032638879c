"""The 61 invalid SFTJobs of tests/corpus/sftjobs through the API server's schema and through the operator.

`sftjob validate` already runs every one of them (tests/api/test_validate_cli.py). Here they meet the two
cluster-side guards: the CRD's schema and CEL rules (as the API server applies them, with cel-python),
and the operator itself, running against the emulator with the CRD's validation switched off, as if an
old CRD or a bypassed admission had let them in. The operator must mark each `Failed` with a
non-retryable `InvalidSpec` naming the field, and create no RayJob.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.crd_check import server_errors
from support.operator_env import wait_for

REPO = Path(__file__).resolve().parents[2]
CORPUS = sorted((REPO / "tests" / "corpus" / "sftjobs").glob("*.yaml"))
AREA = "Bad input"
NAMESPACE = "ml"
SLOW_TIMER_S = 10.0
# What never reaches the operator, and why: the API server only stores JSON objects of the URL's kind.
NOT_DELIVERABLE = {
    "empty-file": "no document to send",
    "not-a-mapping": "the API server stores only JSON objects",
    "tab-indentation": "kubectl cannot parse it",
    "yaml-syntax-error": "kubectl cannot parse it",
    "wrong-api-version": "the API server rejects a body whose apiVersion differs from the URL's",
    "wrong-kind": "the API server rejects a body whose kind differs from the URL's",
}
# The CRD schema cannot see these; the operator's own validation catches them (see test_operator_rejects).
# Unknown fields: the API server prunes them (structural schema) instead of rejecting them.
SCHEMA_ADMITS = {"dataset-unknown-chat-template", "lora-unknown-field", "name-uppercase", "resume-from-bad-uri",
                 "unknown-top-spec-field"}


def _header(path: Path) -> dict[str, str]:
    return dict(line[2:].split(": ", 1) for line in path.read_text().splitlines() if line.startswith("# expect-"))


def _document(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


DELIVERABLE = [p for p in CORPUS if p.stem not in NOT_DELIVERABLE]


@pytest.mark.scenario(AREA, "invalid SFTJob → rejected by the CRD schema and CEL rules at the API server "
                      "(except the few only the operator can judge)")
@pytest.mark.parametrize("case", DELIVERABLE, ids=lambda p: p.stem)
def test_api_server_rejects(case: Path) -> None:
    errors = server_errors(_document(case))
    if case.stem in SCHEMA_ADMITS:
        assert errors == [], "the schema now catches this case: drop it from SCHEMA_ADMITS"
    else:
        assert errors, "the API server would store this invalid SFTJob"


def _name(index: int, path: Path, document: dict[str, Any]) -> str:
    if _header(path)["expect-field"] == "metadata.name":
        return str(document["metadata"]["name"])  # the name is the case
    return re.sub(r"[^a-z0-9-]", "-", f"c{index}-{path.stem}")[:63].rstrip("-")


@pytest.mark.slow
@pytest.mark.scenario(AREA, "invalid SFTJob admitted anyway → the operator sets Failed/InvalidSpec (non-retryable, "
                      "naming the field) and creates no RayJob")
async def test_operator_rejects(k8s: Any, api: Any, operator: Any, record_cases: Any) -> None:
    sftjobs = next(res for res in k8s._schemas if res.plural == "sftjobs")
    k8s._schemas.pop(sftjobs)  # admission off: the operator is the last guard
    # A slow progress timer: 55 jobs refreshed every 0.2 s would keep two cores busy with no-op reconciles.
    await operator(progress_interval_seconds=SLOW_TIMER_S)
    expected: dict[str, tuple[str, str]] = {}
    for index, path in enumerate(DELIVERABLE):
        document = _document(path)
        name = _name(index, path, document)
        document["metadata"] = {"name": name, "namespace": NAMESPACE}
        await api.create_sftjob(document)
        expected[name] = (path.stem, _header(path)["expect-field"])

    async def statuses() -> dict[str, dict[str, Any]] | None:
        listed = await asyncio.to_thread(api.custom.list_namespaced_custom_object, "sftjob.dev", "v1alpha1",
                                         NAMESPACE, "sftjobs")
        found = {o["metadata"]["name"]: o.get("status") or {} for o in listed["items"]}
        return found if set(found) == set(expected) and all(s.get("error") for s in found.values()) else None

    seen = await wait_for(statuses, timeout=60, interval=0.2, what="every invalid SFTJob to get an error")
    wrong = []
    for name, status in seen.items():
        stem, field = expected[name]
        error = status["error"]
        failed = [c for c in status.get("conditions", []) if c["type"] == "Failed" and c["status"] == "True"]
        if not (status.get("phase") == "Failed" and error["code"] == "InvalidSpec" and error.get("retryable") is False
                and error.get("field") == field and failed and failed[0]["reason"] == "InvalidSpec"):
            wrong.append((stem, status))
    rayjobs = await api.list_rayjobs(NAMESPACE)

    async def warned() -> set[str] | None:
        # Kopf posts events from a background queue: wait until the last one is out.
        names = {e["involvedObject"]["name"] for e in await api.events(NAMESPACE)
                 if e.get("reason") == "Failed" and e.get("type") == "Warning"}
        return names if names == set(expected) else None

    record_cases(len(expected), len(expected) - len(wrong))
    assert wrong == []
    assert rayjobs == [] and k8s.count_writes("create", "rayjobs") == 0
    assert await wait_for(warned, timeout=30, what="one Warning/Failed event per job") == set(expected)
