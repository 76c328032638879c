"""The reliability suite's plugin: scenario bookkeeping for docs/reliability.md, and shared fixtures.

Every test here is marked `@pytest.mark.scenario(area, name)`. Collection records how many cases each
scenario has (before `-k` deselection, so the counts are those of the whole suite); each test's outcome
is recorded as it runs; and when `SFTJOB_RELIABILITY_REPORT` names a file, the page is written there at
the end of the session (see report.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reliability.report import REPORT_ENV, ScenarioResult, render

HERE = Path(__file__).resolve().parent


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
        result.tried += 1
        if outcome == "passed":
            result.passed += 1
        elif outcome == "failed":
            result.failed += 1
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
