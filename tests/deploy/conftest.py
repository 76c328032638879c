"""Fixtures of the deployment tests: where the linters are, and skips that name what is missing.

The linters live in a small Python 3.12 environment (helm-sdkpy needs 3.12) that
`scripts/setup-deploy-tools.sh` creates at `.venv-deploy/`; CI creates it before the tests run.
Each tool is found, in order, through:

- `SFTJOB_HELM_PYTHON`: a Python interpreter that can `import helm_sdkpy` (else `.venv-deploy/bin/python`);
- `SFTJOB_HADOLINT` / `SFTJOB_SHELLCHECK`: the binaries (else `hadolint` / `shellcheck` on PATH, else
  `.venv-deploy/bin/`).

A test that needs a missing tool is skipped with a reason naming the tool and how to install it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY_VENV = REPO / ".venv-deploy"
SETUP_HINT = "run scripts/setup-deploy-tools.sh"


def _binary(env_var: str, name: str) -> str | None:
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which(name) or (str(DEPLOY_VENV / "bin" / name) if (DEPLOY_VENV / "bin" / name).is_file() else None)


@pytest.fixture(scope="session")
def helm_python() -> str:
    """A Python interpreter with helm-sdkpy (real Helm) importable."""
    python = os.environ.get("SFTJOB_HELM_PYTHON") or str(DEPLOY_VENV / "bin" / "python")
    if not Path(python).is_file():
        pytest.skip(f"helm-sdkpy is missing: no interpreter at {python} (set SFTJOB_HELM_PYTHON or {SETUP_HINT})")
    probe = subprocess.run([python, "-c", "import helm_sdkpy, yaml"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"helm-sdkpy is missing: {python} cannot import helm_sdkpy and yaml ({SETUP_HINT})")
    return python


@pytest.fixture(scope="session")
def hadolint() -> str:
    """The hadolint binary."""
    found = _binary("SFTJOB_HADOLINT", "hadolint")
    if found is None:
        pytest.skip(f"hadolint is missing (set SFTJOB_HADOLINT, put it on PATH, or {SETUP_HINT})")
    return found


@pytest.fixture(scope="session")
def shellcheck() -> str:
    """The shellcheck binary."""
    found = _binary("SFTJOB_SHELLCHECK", "shellcheck")
    if found is None:
        pytest.skip(f"shellcheck is missing (set SFTJOB_SHELLCHECK, put it on PATH, or {SETUP_HINT})")
    return found
