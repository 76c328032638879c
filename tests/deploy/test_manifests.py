"""Every manifest outside the chart (deploy/, tests/e2e/, the YAML blocks of the deployment docs) is valid.

- Built-in kinds validate with kubernetes-validate (strict: unknown fields fail).
- SFTJobs validate against crds/sftjob.yaml's openAPIV3Schema and CEL rules (as the API server
  would, defaults applied) and with `sftjob validate`.
- Other custom kinds (Argo CD, Flux, Kueue, prometheus-operator) must be ones this test knows, and
  point at paths that exist in this repository.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from tests.support.crd_check import server_errors

from sftjob_api.codes import NOT_RETRYABLE, RETRYABLE, ErrorCode

REPO = Path(__file__).resolve().parents[2]
SFTJOB_CLI = REPO / ".venv" / "bin" / "sftjob"
DOCS = [REPO / "docs" / "install.md", REPO / "docs" / "operations.md"]
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion): manifests must be valid there.
KUBERNETES_VERSION = "1.29"
# Custom kinds the examples use, whose CRDs are not in this repository.
KNOWN_CUSTOM = {
    ("argoproj.io/v1alpha1", "Application"),
    ("source.toolkit.fluxcd.io/v1", "GitRepository"),
    ("helm.toolkit.fluxcd.io/v2", "HelmRelease"),
    ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"),
    ("kueue.x-k8s.io/v1beta1", "LocalQueue"),
}
# A kustomize build file: read by kustomize, never sent to the API server.
KUSTOMIZE = ("kustomize.config.k8s.io/v1beta1", "Kustomization")


@dataclass
class Manifest:
    """One YAML document and where it came from."""

    where: str
    data: dict[str, Any]
    text: str

    @property
    def kind(self) -> tuple[str, str]:
        return (self.data.get("apiVersion", ""), self.data.get("kind", ""))


def _from_yaml_file(path: Path) -> list[Manifest]:
    text = path.read_text()
    chunks = re.split(r"^---\s*$", text, flags=re.MULTILINE)
    return [Manifest(f"{path.relative_to(REPO)} #{i}", yaml.safe_load(c), c) for i, c in enumerate(chunks)
            if yaml.safe_load(c)]


def _from_markdown(path: Path) -> list[Manifest]:
    manifests = []
    for block in re.finditer(r"^```yaml\n(.*?)^```$", path.read_text(), flags=re.MULTILINE | re.DOTALL):
        line = path.read_text()[: block.start()].count("\n") + 1
        for i, chunk in enumerate(re.split(r"^---\s*$", block.group(1), flags=re.MULTILINE)):
            manifests.append(Manifest(f"{path.relative_to(REPO)}:{line} #{i}", yaml.safe_load(chunk), chunk))
    return manifests


def _all() -> list[Manifest]:
    files = [p for p in sorted((REPO / "deploy").rglob("*.yaml")) if not p.name.startswith("values-")]
    files += sorted((REPO / "tests" / "e2e").glob("*.yaml"))
    manifests = [m for path in files for m in _from_yaml_file(path)]
    return manifests + [m for path in DOCS for m in _from_markdown(path)]


MANIFESTS = _all()


def _builtin(api_version: str) -> bool:
    group = api_version.rpartition("/")[0]
    return group in ("", "apps", "batch", "policy", "autoscaling") or (
        group.endswith(".k8s.io") and api_version != KUSTOMIZE[0]
    )


def test_the_manifests_are_found() -> None:
    kinds = {m.kind[1] for m in MANIFESTS}
    assert {"SFTJob", "Secret", "Deployment", "Service", "Job", "ClusterRole", "RoleBinding", "Application",
            "HelmRelease", "GitRepository", "LocalQueue"} <= kinds
    assert sum(m.kind[1] == "SFTJob" for m in MANIFESTS) == 4


@pytest.mark.parametrize("manifest", [m for m in MANIFESTS if _builtin(m.kind[0])], ids=lambda m: m.where)
def test_builtin_kinds_validate_with_kubernetes_validate(manifest: Manifest) -> None:
    kubernetes_validate.validate(manifest.data, desired_version=KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("manifest", [m for m in MANIFESTS if m.kind[1] == "SFTJob"], ids=lambda m: m.where)
def test_sftjobs_validate_against_the_crd(manifest: Manifest) -> None:
    assert manifest.kind[0] == "sftjob.dev/v1alpha1"
    assert server_errors(manifest.data) == []
    # Kept in git and applied again and again: a fixed name and namespace, and nothing but the spec.
    assert set(manifest.data) == {"apiVersion", "kind", "metadata", "spec"}
    assert "generateName" not in manifest.data["metadata"]
    assert manifest.data["metadata"].get("name") and manifest.data["metadata"].get("namespace")


@pytest.mark.parametrize("manifest", [m for m in MANIFESTS if m.kind[1] == "SFTJob"], ids=lambda m: m.where)
def test_sftjobs_pass_sftjob_validate(manifest: Manifest, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(manifest.text)
    done = subprocess.run([str(SFTJOB_CLI), "validate", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 document valid" in done.stdout


def test_every_other_kind_is_known() -> None:
    others = {m.kind for m in MANIFESTS if not _builtin(m.kind[0]) and m.kind[1] != "SFTJob"}
    assert others <= KNOWN_CUSTOM | {KUSTOMIZE}


def test_gitops_sources_point_at_this_repository() -> None:
    for manifest in MANIFESTS:
        spec = manifest.data.get("spec", {})
        if manifest.kind == ("argoproj.io/v1alpha1", "Application"):
            assert (REPO / spec["source"]["path"]).is_dir(), manifest.where
        if manifest.kind == ("helm.toolkit.fluxcd.io/v2", "HelmRelease"):
            assert (REPO / spec["chart"]["spec"]["chart"] / "Chart.yaml").is_file(), manifest.where
        if manifest.kind == ("kustomize.toolkit.fluxcd.io/v1", "Kustomization"):
            assert (REPO / spec["path"] / "kustomization.yaml").is_file(), manifest.where


def test_the_git_kept_jobs_are_all_listed_in_their_kustomization() -> None:
    folder = REPO / "deploy" / "sftjobs"
    listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


def test_documented_immutable_fields_are_the_crds() -> None:
    crd = yaml.safe_load((REPO / "crds" / "sftjob.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    in_crd = {(m.group(1), rule["message"]) for rule in spec["x-kubernetes-validations"]
              if (m := re.fullmatch(r"self\.(\w+) == oldSelf\.\1", rule["rule"]))}
    text = (REPO / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `spec\.(\w+)` \| (.+?) \|$", text, re.MULTILINE))
    assert in_crd and documented == in_crd


def test_troubleshooting_covers_every_trainer_error_code() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", text[text.index("## Troubleshooting"):], re.MULTILINE))
    assert NOT_RETRYABLE | RETRYABLE | {ErrorCode.OUT_OF_MEMORY} <= documented
