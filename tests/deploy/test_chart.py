"""The Helm chart: CRD bytes, `helm lint` with real Helm, and values.schema.json.

`helm lint` runs through helm-sdkpy (real Helm as a library) in the Python 3.12 environment; its
result names each finding's severity and path but not its text, so the tests bisect: a finding is
attributed by linting a copy that differs in one thing.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from sftjob_operator.settings import DEFAULT_LIVENESS_ENDPOINT, DEFAULT_METRICS_PORT, DEFAULT_TRAINER_IMAGE, Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm"
NAMESPACED_VALUES = REPO / "deploy" / "values-namespaced.yaml"
LINT = REPO / "scripts" / "helm_lint.py"


def _lint(helm_python: str, *args: str | Path) -> tuple[int, list[dict[str, str]]]:
    done = subprocess.run(
        [helm_python, str(LINT), str(CHART), "--json", *map(str, args)],
        capture_output=True, text=True, check=False, cwd=REPO,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def _schema_errors(values: dict[str, Any]) -> list[str]:
    schema = json.loads((CHART / "values.schema.json").read_text())
    errors = Draft7Validator(schema).iter_errors(values)
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.validator}" for e in errors)


def test_chart_crd_is_the_generated_crd_byte_for_byte() -> None:
    assert (CHART / "crds" / "sftjob.yaml").read_bytes() == (REPO / "crds" / "sftjob.yaml").read_bytes(), (
        "helm/crds/sftjob.yaml differs from crds/sftjob.yaml: cp crds/sftjob.yaml helm/crds/sftjob.yaml"
    )


def test_chart_has_no_other_crd() -> None:
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["sftjob.yaml"]


def test_helm_lint_default_values_has_no_error(helm_python: str) -> None:
    code, findings = _lint(helm_python)
    assert code == 0
    assert [f for f in findings if f["severity"] == "ERROR"] == []
    # The only warning is chart-level: the optional KubeRay dependency is declared but not vendored
    # into charts/ (`helm dependency build` fetches it). The next test proves that attribution.
    assert [f for f in findings if f["severity"] == "WARNING"] == [{"severity": "WARNING", "path": "."}]


def test_helm_lint_without_the_kuberay_dependency_is_strictly_clean(helm_python: str) -> None:
    code, findings = _lint(helm_python, "--without-dependencies", "--strict")
    assert code == 0
    # What is left is Helm's INFO that the chart has no icon.
    assert findings == [{"severity": "INFO", "path": "Chart.yaml"}]


def test_helm_lint_namespaced_mode_is_strictly_clean(helm_python: str) -> None:
    code, findings = _lint(helm_python, "--values", NAMESPACED_VALUES, "--without-dependencies", "--strict")
    assert code == 0
    assert findings == [{"severity": "INFO", "path": "Chart.yaml"}]


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"progressIntervalSeconds": "thirty"}, "values.yaml"),
        ({"watchNamespaces": "ml-team"}, "values.yaml"),
        ({"metrics": {"port": "9102"}}, "values.yaml"),
    ],
    ids=["interval-string", "namespaces-string", "port-string"],
)
def test_helm_rejects_a_wrong_value_type(helm_python: str, tmp_path: Path, values: dict[str, Any], where: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(values))
    code, findings = _lint(helm_python, "--values", bad, "--without-dependencies")
    assert code == 1
    assert {"severity": "ERROR", "path": where} in findings


def test_default_values_and_namespaced_values_satisfy_the_schema() -> None:
    assert _schema_errors(_values()) == []
    namespaced = {**_values(), **yaml.safe_load(NAMESPACED_VALUES.read_text())}
    assert _schema_errors(namespaced) == []


@pytest.mark.parametrize(
    ("patch", "error"),
    [
        ({"progressIntervalSeconds": "30"}, "progressIntervalSeconds: type"),
        ({"progressIntervalSeconds": 0}, "progressIntervalSeconds: minimum"),
        ({"watchNamespaces": ["ML_Team"]}, "watchNamespaces.0: pattern"),
        ({"watchNamespaces": ["a", "a"]}, "watchNamespaces: uniqueItems"),
        ({"trainer": {"image": "x", "defaultWorkerResources": {"cpu": "500m", "memory": "8Gi"}}},
         "trainer.defaultWorkerResources.cpu: pattern"),
        ({"trainer": {"image": "x", "defaultWorkerResources": {"cpu": "2", "memory": "lots"}}},
         "trainer.defaultWorkerResources.memory: pattern"),
        ({"image": {"repository": "r", "pullPolicy": "Sometimes"}}, "image.pullPolicy: enum"),
        ({"metrics": {"port": 8080, "service": {"enabled": True}, "serviceMonitor": {"enabled": False}}},
         "metrics.port: not"),
        ({"rbac": {"create": "yes"}}, "rbac.create: type"),
        ({"replicaCount": 2}, ": additionalProperties"),
    ],
)
def test_schema_rejects_bad_values(patch: dict[str, Any], error: str) -> None:
    assert _schema_errors({**_values(), **patch}) == [error]


def test_replicas_is_not_a_value() -> None:
    # Kopf runs standalone (no peering): a second replica would act on every SFTJob twice.
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert re.search(r"^  replicas: 1$", deployment, re.MULTILINE)
    assert re.search(r"^    type: Recreate$", deployment, re.MULTILINE)


# Each variable the Deployment sets, and the value it takes from values.yaml (`{{ .Values.<path> | quote }}`).
ENV_FROM_VALUES = {
    "SFTJOB_TRAINER_IMAGE": "trainer.image",
    "SFTJOB_DEFAULT_WORKER_CPU": "trainer.defaultWorkerResources.cpu",
    "SFTJOB_DEFAULT_WORKER_MEMORY": "trainer.defaultWorkerResources.memory",
    "SFTJOB_PROGRESS_INTERVAL_SECONDS": "progressIntervalSeconds",
    "SFTJOB_METRICS_PORT": "metrics.port",
}


def _lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for key in path.split("."):
        node = node[key]
    return node


def test_deployment_sets_exactly_the_operator_settings_from_values() -> None:
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    set_by_chart = set(re.findall(r"- name: (SFTJOB_[A-Z_]+)", deployment))
    assert set_by_chart == {*ENV_FROM_VALUES, "SFTJOB_WATCH_NAMESPACES"}
    for name, path in ENV_FROM_VALUES.items():
        assert re.search(rf"- name: {name}\n\s+value: {{{{ \.Values\.{re.escape(path)} \| quote }}}}", deployment), name
    assert 'value: {{ join "," .Values.watchNamespaces | quote }}' in deployment


def test_operator_reads_the_chart_defaults_as_its_own_defaults() -> None:
    values = _values()
    env = {name: str(_lookup(values, path)) for name, path in ENV_FROM_VALUES.items()}
    env["SFTJOB_WATCH_NAMESPACES"] = ",".join(values["watchNamespaces"])
    settings = Settings.from_env(env)
    assert settings.clusterwide
    assert settings.trainer_image == DEFAULT_TRAINER_IMAGE == values["trainer"]["image"]
    assert settings.metrics_port == DEFAULT_METRICS_PORT == values["metrics"]["port"]
    assert settings.progress_interval_seconds == 30
    assert (settings.default_worker_cpu, settings.default_worker_memory) == ("4", "32Gi")


def test_operator_accepts_the_namespaced_values() -> None:
    values = yaml.safe_load(NAMESPACED_VALUES.read_text())
    settings = Settings.from_env({
        "SFTJOB_WATCH_NAMESPACES": ",".join(values["watchNamespaces"]),
        "SFTJOB_DEFAULT_WORKER_CPU": values["trainer"]["defaultWorkerResources"]["cpu"],
        "SFTJOB_DEFAULT_WORKER_MEMORY": values["trainer"]["defaultWorkerResources"]["memory"],
        "SFTJOB_PROGRESS_INTERVAL_SECONDS": str(values["progressIntervalSeconds"]),
    })
    assert settings.watch_namespaces == ("ml-team", "ml-research")
    assert not settings.clusterwide
    assert settings.progress_interval_seconds == 60


def test_probes_and_ports_match_the_operator_image() -> None:
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"--liveness={DEFAULT_LIVENESS_ENDPOINT}" in dockerfile
    liveness = re.search(r"--liveness=http://0\.0\.0\.0:(\d+)(/\w+)", dockerfile)
    assert liveness is not None
    port, path = liveness.groups()
    assert f"containerPort: {port}" in deployment
    assert deployment.count(f"path: {path}") == 3  # startup, liveness and readiness probes
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile)
    assert uid is not None and f"runAsUser: {uid.group(1)}" in deployment
    assert f"USER {uid.group(1)}:" in dockerfile


def test_container_security_context_is_restricted() -> None:
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    for line in ("runAsNonRoot: true", "type: RuntimeDefault", "allowPrivilegeEscalation: false",
                 "readOnlyRootFilesystem: true", "- ALL"):
        assert line in deployment, line
