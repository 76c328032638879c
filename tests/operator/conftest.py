"""Fixtures of the operator tests: the realistic emulator with the real CRDs, and operators to run against it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import kmock as kmocklib
import pytest

from support.kmock_realistic import InjectedFault, RealisticEmulator
from support.operator_env import (
    RAYJOB_CRD,
    Api,
    EmulatorThread,
    OperatorRun,
    run_operator,
    use_kubeconfig,
    write_kubeconfig,
)

# Short enough that a test waits a fraction of a second for the timer; the default is 30 s.
TEST_INTERVAL = 0.2


@pytest.fixture
def k8s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RealisticEmulator]:
    """The emulator (in its own thread) with the SFTJob and RayJob CRDs, and KUBECONFIG pointing at it."""
    server = EmulatorThread()
    with server as emulator:
        emulator.kubeconfig = write_kubeconfig(str(emulator.url), tmp_path / "kubeconfig")
        use_kubeconfig(emulator.kubeconfig, monkeypatch.setenv, monkeypatch.setattr)
        yield emulator
    # 404/409/422 are normal API flow; 5xx are bugs, unless a test injected them.
    bad = [
        e
        for e in server.errors
        if not (isinstance(e, kmocklib.KubernetesError) and (e.status < 500 or isinstance(e, InjectedFault)))
    ]
    assert not bad, bad


@pytest.fixture
def api(k8s: RealisticEmulator) -> Api:
    """Test-side client: create SFTJobs, play KubeRay, read events."""
    return Api(k8s.kubeconfig)


@pytest.fixture
def rayjob_schema_present() -> bool:
    return RAYJOB_CRD.is_file()


@pytest.fixture
def operator(k8s: RealisticEmulator) -> Callable[..., AbstractAsyncContextManager[OperatorRun]]:
    """`async with operator(**settings) as run:` runs the operator in the test's event loop.

    Use it inside the test body, not in a fixture: Kopf, when it stops, waits up to 5 s for every
    task created in its loop since it started, and pytest-asyncio runs fixture teardown in such a task.
    """
    from sftjob_operator.settings import Settings

    def start(**overrides: Any) -> AbstractAsyncContextManager[OperatorRun]:
        settings = Settings(**{"progress_interval_seconds": TEST_INTERVAL, "metrics_port": 0, **overrides})
        return run_operator(settings)

    return start
