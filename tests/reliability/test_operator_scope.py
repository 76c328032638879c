"""The operator acts only in the namespaces it is configured to watch, run live on the emulator.

The emulator serves Namespaces (Kopf lists and watches them in namespaced mode); the operator runs
with `SFTJOB_WATCH_NAMESPACES=team-a` as the Helm chart would set it, and Kopf gets the same list.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from reliability.conftest import OPERATOR_INTERVAL_S
from support.operator_env import Api, make_sftjob, wait_for

WATCHED, OTHER = "team-a", "team-b"


@pytest.mark.scenario("Security", "namespace-scoped operator live on the emulator (SFTJOB_WATCH_NAMESPACES=team-a): "
                      "team-a's SFTJob gets its RayJob and status; team-b's gets no RayJob, status, finalizer, "
                      "annotation or event, before or after it changes")
async def test_operator_acts_only_in_its_namespaces(k8s: Any, api: Api, operator: Any, tmp_path: Path) -> None:
    for namespace in (WATCHED, OTHER):
        await api.create_namespace(namespace)
    # The unwatched job exists before the operator starts (Kopf's initial listing) and is edited after.
    await api.create_sftjob(make_sftjob("outsider", OTHER, output_uri=str(tmp_path)))
    runner = await operator(namespaces=(WATCHED,))
    assert runner.settings.watch_namespaces == (WATCHED,)
    await api.create_sftjob(make_sftjob("insider", WATCHED, output_uri=str(tmp_path)))
    await api.patch_sftjob(OTHER, "outsider", {"spec": {"runPolicy": {"backoffLimit": 1}}})
    await api.create_sftjob(make_sftjob("latecomer", OTHER, output_uri=str(tmp_path)))

    rayjob = await wait_for(lambda: api.get_rayjob(WATCHED, "insider-a1"), what="the watched job's RayJob")

    async def insider_status() -> dict[str, Any] | None:
        return ((await api.get_sftjob(WATCHED, "insider")) or {}).get("status")

    status = await wait_for(insider_status, what="the watched job's status")
    await asyncio.sleep(5 * OPERATOR_INTERVAL_S)  # several progress ticks for anything to reach team-b

    assert rayjob["metadata"]["namespace"] == WATCHED and status["attempt"] == 1
    assert await api.list_rayjobs(OTHER) == []
    for name in ("outsider", "latecomer"):
        body = await api.get_sftjob(OTHER, name)
        assert body is not None
        assert "status" not in body
        assert "finalizers" not in body["metadata"]
        assert not any(key.startswith("sftjob.dev/") for key in body["metadata"].get("annotations") or {})
    assert await api.events(OTHER) == []
    # Every write in team-b is the test's own: two creates and the spec patch.
    assert [(w.action, w.plural, w.subresource, w.name) for w in k8s.writes if w.namespace == OTHER] == [
        ("CREATE", "sftjobs", None, "outsider"),
        ("UPDATE", "sftjobs", None, "outsider"),
        ("CREATE", "sftjobs", None, "latecomer"),
    ]
