"""Layout rules that keep the two source roots importable and independent."""

from __future__ import annotations

import operator
import subprocess
import sys
import sysconfig
from pathlib import Path

from sftjob_api.reference import render_reference

REPO = Path(__file__).resolve().parents[2]


def test_operator_source_root_is_not_a_package() -> None:
    assert not (REPO / "operator" / "__init__.py").exists()


def test_import_operator_is_the_standard_library() -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(operator.__file__).resolve().parent == stdlib
    assert operator.itemgetter(1)([0, 7]) == 7


def test_import_operator_from_the_repo_root_is_the_standard_library() -> None:
    # Run from the repo root with it first on sys.path: the worst case for shadowing.
    code = "import operator, sys; print(operator.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "sftjob" not in out and out.strip().endswith("operator.py")


def test_reference_docs_are_current() -> None:
    path = REPO / "docs" / "sftjob-reference.md"
    assert path.read_text() == render_reference(), "stale: run `sftjob reference > docs/sftjob-reference.md`"


def test_reference_lists_every_spec_field() -> None:
    text = render_reference()
    for field in ("`trainOn`", "`maxSeqLength`", "`useDora`", "`numVirtualTokens`", "`queueName`", "`resumeFrom`",
                  "`estimatedFinishTime`", "`dashboardURL`", "`retryable`"):
        assert field in text
