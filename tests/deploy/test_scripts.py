"""Every shell script of the deployment (lint, setup, kind e2e) is shellcheck clean."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted([*(REPO / "scripts").glob("*.sh"), *(REPO / "tests" / "e2e").glob("*.sh")])


def test_the_scripts_exist() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"kind-e2e.sh", "deploy-lint.sh", "setup-deploy-tools.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_shellcheck_is_clean(shellcheck: str, script: Path) -> None:
    done = subprocess.run([shellcheck, "--severity=style", str(script)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_scripts_are_strict_and_executable(script: Path) -> None:
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
    assert "set -euo pipefail" in script.read_text()
