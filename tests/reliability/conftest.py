"""The reliability suite's plugin: scenario bookkeeping for docs/reliability.md, and shared fixtures.

Every test here is marked `@pytest.mark.scenario(area, name)`. Collection records how many cases each
scenario has (before `-k` deselection, so the counts are those of the whole suite); each test's outcome
is recorded as it runs; and when `SFTJOB_RELIABILITY_REPORT` names a file, the page is written there at
the end of the session (see report.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reliability.report import REPORT_ENV, ScenarioResult, render

HERE = Path(__file__).resolve().parent
# The operator's progress timer in these tests: a fraction of a second instead of the default 30 s.
OPERATOR_INTERVAL_S = 0.2


@dataclass
class Bookkeeping:
    """What the plugin knows in one session."""

    scenario_of: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Node id → (area, scenario), for every collected reliability test."""
    collected: dict[tuple[str, str], int] = field(default_factory=dict)
    """(area, scenario) → collected cases."""
    modules: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    """(area, scenario) → test module names that hold it."""
    tests: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """(area, scenario) → `file::function`, in collection order."""
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Node id → (outcome, xfail reason)."""
    figures: dict[str, str] = field(default_factory=dict)
    """Figures the tests measured."""
    case_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Node id → (cases tried, cases passed) for tests that try many cases in one run."""


BOOKKEEPING = pytest.StashKey[Bookkeeping]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "scenario(area, name): the docs/reliability.md row this test counts towards (tests/reliability)"
    )
    config.stash[BOOKKEEPING] = Bookkeeping()


def _in_suite(item: pytest.Item) -> bool:
    return Path(str(item.fspath)).resolve().parent == HERE


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    book = config.stash[BOOKKEEPING]
    for item in items:
        if not _in_suite(item):
            continue
        marker = item.get_closest_marker("scenario")
        if marker is None:
            raise pytest.UsageError(f"{item.nodeid}: every test in tests/reliability needs @pytest.mark.scenario")
        key = (str(marker.args[0]), str(marker.args[1]))
        book.scenario_of[item.nodeid] = key
        book.collected[key] = book.collected.get(key, 0) + 1
        module = Path(str(item.fspath)).name
        book.modules.setdefault(key, set()).add(module)
        test = f"{module}::{getattr(item, 'originalname', item.name)}"
        if test not in book.tests.setdefault(key, []):
            book.tests[key].append(test)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    book = item.config.stash[BOOKKEEPING]
    if report.nodeid not in book.scenario_of or book.outcomes.get(report.nodeid, ("", ""))[0] == "failed":
        return
    if report.failed:
        book.outcomes[report.nodeid] = ("failed", "")
    elif report.skipped and hasattr(report, "wasxfail"):
        book.outcomes[report.nodeid] = ("xfailed", str(report.wasxfail))
    elif report.skipped:
        book.outcomes[report.nodeid] = ("skipped", "")
    elif report.when == "call" and report.passed:
        book.outcomes[report.nodeid] = ("passed", "")


def results(book: Bookkeeping) -> list[ScenarioResult]:
    """The per-scenario results of what ran in this session."""
    out: dict[tuple[str, str], ScenarioResult] = {}
    for nodeid, key in book.scenario_of.items():
        result = out.setdefault(key, ScenarioResult(area=key[0], name=key[1], tests=book.tests[key]))
        outcome, reason = book.outcomes.get(nodeid, ("", ""))
        if not outcome:
            continue  # deselected or not run
        tried, passed = book.case_counts.get(nodeid, (1, 1 if outcome == "passed" else 0))
        result.tried += tried
        if outcome == "passed":
            result.passed += passed
        elif outcome == "failed":
            result.passed += passed
            result.failed += max(1, tried - passed)
        elif outcome == "xfailed":
            case = nodeid.split("[", 1)[1].rstrip("]") if "[" in nodeid else nodeid.rsplit("::", 1)[-1]
            result.gaps[case] = reason
        else:
            result.skipped += 1
    return list(out.values())


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get(REPORT_ENV)
    book = session.config.stash.get(BOOKKEEPING, None)
    if not target or book is None or not book.outcomes:
        return
    Path(target).write_text(render(results(book), book.figures), encoding="utf-8")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, str]:
    """Measured values for the 'Measured figures' table of docs/reliability.md: `figures[name] = "12 MiB"`."""
    return request.config.stash[BOOKKEEPING].figures


@pytest.fixture(scope="session")
def bookkeeping(request: pytest.FixtureRequest) -> Bookkeeping:
    """The plugin's state (test_report.py compares it with the page)."""
    return request.config.stash[BOOKKEEPING]


@pytest.fixture
def cli_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """SFTJOB_DEBUG=1: the CLI re-raises unexpected exceptions, so an internal error fails the test loudly."""
    monkeypatch.setenv("SFTJOB_DEBUG", "1")


@pytest.fixture
def record_cases(request: pytest.FixtureRequest) -> Callable[[int, int], None]:
    """For a test that tries many cases in one run (one operator, many jobs): `record_cases(tried, passed)`.

    The page then counts those cases for the test instead of 1. Call it before the test's final asserts,
    so that a failing run still reports what it tried.
    """
    book = request.config.stash[BOOKKEEPING]

    def record(tried: int, passed: int) -> None:
        book.case_counts[request.node.nodeid] = (tried, passed)

    return record


# ------------------------------------------------------------------------------ the operator on the emulator


@pytest.fixture
def k8s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The emulator (its own thread and loop) with the real SFTJob and RayJob CRDs, KUBECONFIG pointing at it.

    At teardown: no 5xx other than those a test injected.
    """
    import kmock as kmocklib

    from support.kmock_realistic import InjectedFault
    from support.operator_env import EmulatorThread, use_kubeconfig, write_kubeconfig

    server = EmulatorThread()
    with server as emulator:
        emulator.kubeconfig = write_kubeconfig(str(emulator.url), tmp_path / "kubeconfig")
        use_kubeconfig(emulator.kubeconfig, monkeypatch.setenv, monkeypatch.setattr)
        yield emulator
    bad = [e for e in server.errors
           if not (isinstance(e, kmocklib.KubernetesError) and (e.status < 500 or isinstance(e, InjectedFault)))]
    assert not bad, bad


@pytest.fixture
def api(k8s: Any) -> Any:
    """Test-side client (kubectl's and KubeRay's part)."""
    from support.operator_env import Api

    return Api(k8s.kubeconfig)


@pytest.fixture
def operator(k8s: Any) -> Iterator[Callable[..., Any]]:
    """`await operator(namespaces=(), **settings)` starts an operator in a thread of its own (stopped at teardown).

    Its own event loop keeps the stop cheap: Kopf waits for every task created in its loop since it
    started, which in the test's loop would include pytest-asyncio's fixture tasks (5 s each).
    """
    from sftjob_operator.settings import Settings
    from support.operator_env import OperatorThread

    started: list[OperatorThread] = []

    async def start(namespaces: tuple[str, ...] = (), **overrides: Any) -> OperatorThread:
        settings = Settings(**{"progress_interval_seconds": OPERATOR_INTERVAL_S, "metrics_port": 0,
                               "watch_namespaces": namespaces, **overrides})
        runner = OperatorThread(settings, namespaces=namespaces)
        started.append(runner)
        return await asyncio.to_thread(runner.start)

    yield start
    for runner in reversed(started):
        runner.stop()
