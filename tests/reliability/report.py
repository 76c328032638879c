"""Render docs/reliability.md from the results of the tests in tests/reliability/.

Every test there carries `@pytest.mark.scenario(area, name)`; the plugin in conftest.py records
each test's outcome per scenario and the figures tests measure, and at the end of a run where
`SFTJOB_RELIABILITY_REPORT` names a file, writes this page there. Regenerate the page with:

    .venv/bin/python tests/reliability/report.py

(the same as `SFTJOB_RELIABILITY_REPORT=docs/reliability.md .venv/bin/python -m pytest tests/reliability -q`).
test_report.py checks that the page lists every scenario the suite holds, with as many cases as it
collects, and that every scenario on the page names a test that exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
REPORT_ENV = "SFTJOB_RELIABILITY_REPORT"
GENERATE_COMMAND = ".venv/bin/python tests/reliability/report.py"

# Tests of the page itself (test_report.py) carry this area; they are not scenarios and stay off the page.
META_AREA = "Report"
# Order of the areas on the page (the order); an area not listed here goes last.
AREAS = ("Bad input", "Security", "Trainer faults", "Operator faults", "Load")

# Scenarios proven by tests outside tests/reliability, which this suite reuses instead of repeating
# an expensive run: (area, scenario, test node id relative to the repository root).
ELSEWHERE = (
    ("Bad input", "61 invalid SFTJobs: `sftjob validate` exits 2 naming file:line and field",
     "tests/api/test_validate_cli.py::test_invalid_document_names_the_field"),
    ("Bad input", "CRD schema and CEL rules as the API server applies them",
     "tests/api/test_crd.py"),
    ("Trainer faults", "driver killed mid-run (SFTJOB_FAULT_KILL_DRIVER_AT_STEP): attempt 2 resumes from the "
     "last checkpoint and finishes", "tests/trainer/test_ray.py::test_resume_after_the_driver_is_killed"),
    ("Security", "operator RBAC equals what its code uses (`sftjob_operator.permissions.required_rbac_rules`)",
     "tests/deploy/test_rbac.py"),
    ("Security", "operator Deployment in the chart: non-root, restricted security context",
     "tests/deploy/test_chart.py"),
)

# Scenarios of issue 8 this suite does not test yet, with what stands in the way.
NOT_COVERED: tuple[tuple[str, str, str], ...] = ()


@dataclass
class ScenarioResult:
    """The outcomes of the tests of one scenario."""

    area: str
    name: str
    tests: list[str] = field(default_factory=list)
    """`file::function` of the tests (without parameters), in collection order."""
    tried: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    gaps: dict[str, str] = field(default_factory=dict)
    """Known gaps: case id → reason (strict xfails that failed as expected)."""

    @property
    def outcome(self) -> str:
        """pass, pass with known gaps, FAIL, or skipped."""
        if self.failed:
            return "FAIL"
        if self.passed == 0 and not self.gaps:
            return "skipped"
        if self.gaps:
            return f"pass; {len(self.gaps)} known gap{'s' if len(self.gaps) > 1 else ''}"
        return "pass"


def render(results: list[ScenarioResult], figures: dict[str, str]) -> str:
    """The Markdown page.

    Args:
        results: One entry per scenario.
        figures: Measured values (name → value with unit) that tests reported.

    Returns:
        The page's text.
    """
    results = [r for r in results if r.area != META_AREA]
    order = {area: i for i, area in enumerate(AREAS)}
    by_area: dict[str, list[ScenarioResult]] = {}
    for result in sorted(results, key=lambda r: (order.get(r.area, len(AREAS)), r.area)):
        by_area.setdefault(result.area, []).append(result)
    tried = sum(r.tried for r in results)
    passed = sum(r.passed for r in results)
    gaps = sum(len(r.gaps) for r in results)
    failed = sum(r.failed for r in results)
    lines = [
        "# Reliability and security",
        "",
        f"Generated from the results of `tests/reliability/` by `{GENERATE_COMMAND}`; do not edit by hand.",
        "Each row is one scenario: the cases tried (test cases, parametrised cases counted one by one),",
        "how many passed, and the tests that prove it. A *known gap* is a case the code does not handle",
        "yet: it runs as a strict xfail, so the suite turns red the day it is fixed and the case must",
        "become a plain test.",
        "",
        f"**{len(results)} scenarios, {tried} cases tried, {passed} passed, {gaps} known gaps, {failed} failed.**",
        "",
    ]
    for area, rows in by_area.items():
        lines += [f"## {area}", "", "| Scenario | Outcome | Tried | Passed | Tests |", "|---|---|---:|---:|---|"]
        for r in rows:
            tests = "<br>".join(f"`{t}`" for t in r.tests)
            lines.append(f"| {r.name} | {r.outcome} | {r.tried} | {r.passed} | {tests} |")
        lines.append("")
    gap_rows = [(r, case, reason) for r in results for case, reason in sorted(r.gaps.items())]
    if gap_rows:
        lines += ["## Known gaps", "", "| Scenario | Case | Why it should fail |", "|---|---|---|"]
        lines += [f"| {r.name} | `{case}` | {reason} |" for r, case, reason in gap_rows]
        lines.append("")
    if figures:
        lines += ["## Measured figures", "", "Measured on the machine that generated this page (2 CPU cores).", "",
                  "| Figure | Value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in sorted(figures.items())]
        lines.append("")
    lines += ["## Proven elsewhere in the suite", "",
              "Scenarios of this page that other test folders already prove; not repeated here.", "",
              "| Area | Scenario | Test |", "|---|---|---|"]
    lines += [f"| {area} | {name} | `{node}` |" for area, name, node in ELSEWHERE]
    lines.append("")
    lines += ["## Not covered yet", ""]
    if NOT_COVERED:
        lines += ["| Area | Scenario | Why |", "|---|---|---|"]
        lines += [f"| {area} | {name} | {why} |" for area, name, why in NOT_COVERED]
    else:
        lines.append("Nothing: every scenario of issue 8 has a test above.")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    """Run tests/reliability and write docs/reliability.md from the results; returns pytest's exit code.

    test_report.py (which checks the page) is left out of this run: it would judge the page being replaced.
    """
    env = {**os.environ, REPORT_ENV: str(DOC)}
    command = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider",
               "--ignore=tests/reliability/test_report.py"]
    return subprocess.run(command, cwd=REPO, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
