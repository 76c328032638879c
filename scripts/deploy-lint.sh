#!/usr/bin/env bash
# Lint everything that deploys sftjob: the Helm chart (default values and namespaced mode, with real Helm),
# both Dockerfiles (hadolint) and the shell scripts (shellcheck). CI calls it after
# scripts/setup-deploy-tools.sh; tests/deploy/ runs the same checks one by one.
#
# Env: SFTJOB_DEPLOY_VENV - the environment setup-deploy-tools.sh made (default: .venv-deploy)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SFTJOB_DEPLOY_VENV:-${root}/.venv-deploy}"
if [[ ! -x "${venv}/bin/python" ]]; then
  echo "deploy-lint: ${venv} is missing; run scripts/setup-deploy-tools.sh first" >&2
  exit 1
fi
cd "${root}"

cmp crds/sftjob.yaml helm/crds/sftjob.yaml
"${venv}/bin/python" scripts/helm_lint.py helm
"${venv}/bin/python" scripts/helm_lint.py helm --values deploy/values-namespaced.yaml
"${venv}/bin/hadolint" Dockerfile trainer_image/Dockerfile
"${venv}/bin/shellcheck" scripts/*.sh tests/e2e/*.sh
echo "deploy-lint: chart, Dockerfiles and scripts are clean"
