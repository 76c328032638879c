#!/usr/bin/env bash
# End-to-end test on a kind cluster: build both images, install KubeRay, MinIO and the sftjob chart,
# run a CPU-only tiny SFTJob to Succeeded and check its artifacts in MinIO.
#
# Needs: Docker (a running engine), kind, kubectl, helm 3, network access to pull the base images and the
# KubeRay chart. Works on a laptop and in GitHub Actions (.github/workflows/e2e.yaml).
#
# Usage: tests/e2e/kind-e2e.sh [--dry-run] [--keep] [--skip-build]
#   --dry-run     print every step's commands without running anything (no Docker needed)
#   --keep        keep the kind cluster afterwards (default: delete it, also on failure)
#   --skip-build  use sftjob-operator:e2e and sftjob-trainer:e2e already in the local Docker
# Env: CLUSTER (default sftjob-e2e), SFTJOB_E2E_TIMEOUT (seconds the SFTJob may take; default 1800)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cluster="${CLUSTER:-sftjob-e2e}"
timeout="${SFTJOB_E2E_TIMEOUT:-1800}"
# The KubeRay release whose RayJob CRD the operator's manifests are validated against (tests/support/schemas, vendored).
kuberay_version="1.7.0"
namespace="sftjob-e2e"
# CPU images for a runner without a GPU: Ray's CPU base image and PyTorch's CPU wheel index.
ray_cpu_image="rayproject/ray:2.60.0-py311-cpu"
torch_cpu_index="https://download.pytorch.org/whl/cpu"

dry_run=0
keep=0
build=1
for arg in "$@"; do
  case "${arg}" in
    --dry-run) dry_run=1 ;;
    --keep) keep=1 ;;
    --skip-build) build=0 ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "kind-e2e: unknown argument ${arg} (try --help)" >&2; exit 2 ;;
  esac
done

step_number=0
step() {
  step_number=$((step_number + 1))
  echo "==> step ${step_number}: $*"
}

# Print a command, then run it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ "${dry_run}" -eq 0 ]]; then
    "$@"
  fi
}

require() {
  local missing=()
  for tool in docker kind kubectl helm; do
    command -v "${tool}" >/dev/null 2>&1 || missing+=("${tool}")
  done
  if [[ "${#missing[@]}" -gt 0 ]]; then
    echo "kind-e2e: missing: ${missing[*]}" >&2
    exit 3
  fi
  if ! docker info >/dev/null 2>&1; then
    echo "kind-e2e: missing: a running Docker engine (docker info fails)" >&2
    exit 3
  fi
}

diagnose() {
  echo "kind-e2e: failed; what the cluster shows:" >&2
  kubectl -n "${namespace}" get sftjobs,rayjobs,pods,jobs -o wide >&2 || true
  kubectl -n "${namespace}" describe sftjob tiny-lora >&2 || true
  kubectl -n sftjob-system logs deployment/sftjob --tail=200 >&2 || true
  kubectl -n "${namespace}" logs -l ray.io/node-type=head --tail=200 >&2 || true
}

cleanup() {
  local code=$?
  if [[ "${code}" -ne 0 && "${dry_run}" -eq 0 ]]; then
    diagnose
  fi
  if [[ "${keep}" -eq 0 && "${dry_run}" -eq 0 ]]; then
    kind delete cluster --name "${cluster}" >/dev/null 2>&1 || true
  fi
  exit "${code}"
}

if [[ "${dry_run}" -eq 0 ]]; then
  require
  trap cleanup EXIT
fi
cd "${root}"

step "create the kind cluster ${cluster}"
run kind create cluster --name "${cluster}" --wait 180s

step "build the operator and trainer images (CPU trainer: no GPU on a kind node)"
if [[ "${build}" -eq 1 ]]; then
  run docker build -t sftjob-operator:e2e -f Dockerfile .
  run docker build -t sftjob-trainer:e2e -f trainer_image/Dockerfile \
    --build-arg "RAY_IMAGE=${ray_cpu_image}" \
    --build-arg "TORCH_INDEX_URL=${torch_cpu_index}" \
    --build-arg REQUIRE_CUDA=0 .
fi

step "load both images into the kind node"
run kind load docker-image sftjob-operator:e2e sftjob-trainer:e2e --name "${cluster}"

step "install KubeRay ${kuberay_version}"
run helm repo add kuberay https://ray-project.github.io/kuberay-helm/ --force-update
run helm upgrade --install kuberay-operator kuberay/kuberay-operator --version "${kuberay_version}" \
  --namespace kuberay-system --create-namespace --wait --timeout 5m

step "install MinIO and seed it with a tiny model and dataset"
run kubectl create namespace "${namespace}"
run kubectl apply -f tests/e2e/minio.yaml
run kubectl -n "${namespace}" rollout status deployment/minio --timeout=300s
run kubectl -n "${namespace}" create configmap e2e-scripts \
  --from-file=tests/e2e/seed_storage.py --from-file=tests/e2e/check_artifacts.py
run kubectl apply -f tests/e2e/seed-job.yaml
run kubectl -n "${namespace}" wait --for=condition=complete job/seed-storage --timeout=600s

step "install the sftjob chart with the e2e images"
run helm upgrade --install sftjob helm --namespace sftjob-system --create-namespace \
  --set image.repository=sftjob-operator --set image.tag=e2e --set image.pullPolicy=Never \
  --set trainer.image=sftjob-trainer:e2e --set progressIntervalSeconds=5 \
  --wait --timeout 5m

step "apply the CPU-only tiny SFTJob and wait for Succeeded (up to ${timeout} s)"
run kubectl apply -f tests/e2e/sftjob-tiny.yaml
run kubectl -n "${namespace}" wait sftjob/tiny-lora --for=jsonpath='{.status.phase}'=Succeeded \
  --timeout="${timeout}s"
run kubectl -n "${namespace}" get sftjob tiny-lora -o wide

step "check the artifacts in MinIO against manifest.json"
run kubectl apply -f tests/e2e/check-job.yaml
run kubectl -n "${namespace}" wait --for=condition=complete job/check-artifacts --timeout=300s
run kubectl -n "${namespace}" logs job/check-artifacts

echo "kind-e2e: ${step_number} steps $([[ "${dry_run}" -eq 1 ]] && echo printed || echo passed)"
