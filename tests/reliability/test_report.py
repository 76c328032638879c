"""docs/reliability.md is current: it lists every scenario of this suite with its tests, each of which exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from reliability.conftest import Bookkeeping
from reliability.report import DOC, ELSEWHERE, GENERATE_COMMAND, META_AREA, REPO

HERE = Path(__file__).resolve().parent
_ROW = re.compile(r"^\| (?P<name>.+?) \| (?P<outcome>[^|]+) \| (?P<tried>\d+) \| (?P<passed>\d+) \| (?P<tests>.+) \|$")


def _rows() -> dict[str, dict[str, str]]:
    return {m["name"]: m.groupdict() for line in DOC.read_text().splitlines() if (m := _ROW.match(line))}


@pytest.mark.scenario(META_AREA, f"docs/reliability.md is current (regenerate: `{GENERATE_COMMAND}`)")
def test_page_lists_every_scenario_with_its_tests(bookkeeping: Bookkeeping) -> None:
    rows = _rows()
    collected_modules = {m for modules in bookkeeping.modules.values() for m in modules}
    for (area, name), count in bookkeeping.collected.items():
        if area == META_AREA:
            continue
        assert name in rows, f"scenario missing from {DOC.name}: {name}; run {GENERATE_COMMAND}"
        row = rows[name]
        assert int(row["tried"]) >= count, f"{name}: the page counts fewer cases than the suite holds"
        assert re.findall(r"`([^`]+)`", row["tests"]) == bookkeeping.tests[(area, name)]
    for name, row in rows.items():
        modules = {t.split("::")[0] for t in re.findall(r"`([^`]+)`", row["tests"])}
        if modules <= collected_modules:
            assert any(key[1] == name for key in bookkeeping.collected), f"{DOC.name} lists a removed scenario: {name}"
        assert row["outcome"].strip() != "FAIL", f"{name} failed when the page was generated"
    assert len(rows) >= 10


@pytest.mark.scenario(META_AREA, "every scenario on docs/reliability.md names tests that exist")
def test_every_listed_test_exists() -> None:
    for name, row in _rows().items():
        for test in re.findall(r"`([^`]+)`", row["tests"]):
            module, function = test.split("::")
            source = (HERE / module).read_text()
            assert re.search(rf"^(async )?def {function}\(", source, re.MULTILINE), f"{name}: {test} does not exist"
    for _, name, node in ELSEWHERE:
        path, _, function = node.partition("::")
        source = (REPO / path).read_text()
        assert not function or re.search(rf"^(async )?def {function}\(", source, re.MULTILINE), f"{name}: {node}"
