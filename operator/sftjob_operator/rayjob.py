"""Build the KubeRay RayJob of one attempt of an SFTJob: a pure function of the job, the attempt and the settings.

No I/O and no clock: the same inputs give the same manifest, so `sftjob render` prints exactly
what the operator creates, and golden files pin it down.

How the trainer is started (the contract with `sftjob_trainer`):

- the entrypoint is the constant `python -m sftjob_trainer`: no user string ever becomes shell text;
- the job travels as JSON in the `SFTJOB_CONFIG` environment variable of the head and worker
  containers (`apiVersion`, `kind`, `metadata.name`/`namespace`, `spec`), and the attempt number in
  `SFTJOB_ATTEMPT`; the trainer resumes from the latest checkpoint by itself
  (`spec.checkpointing.resumeFrom: latest`);
- credentials come only from the Secrets named by a `secretRef` (`tracking.mlflow`, `tracking.wandb`,
  `model`, `dataset`, `output`), through `envFrom`: each Secret's keys as they are (in that order: a later
  Secret wins a clash, so storage credentials win), and again with a per-role prefix (`SFTJOB_MLFLOW_`,
  `SFTJOB_WANDB_`, `SFTJOB_MODEL_`, `SFTJOB_DATASET_`, `SFTJOB_OUTPUT_`) so that the trainer can tell e.g.
  the dataset's AWS keys from the output's. Nothing goes into `runtimeEnvYAML` (Ray shows it on its dashboard);
- the two OpenAI-compatible services are the exception, so that one's key never reaches the other's endpoint:
  the distillation teacher's Secret (`distillation.teacher.secretRef`) and the judge's
  (`evaluation.judge.secretRef`) are not in `envFrom`. Their key `OPENAI_API_KEY` alone becomes
  `SFTJOB_TEACHER_API_KEY` and `SFTJOB_JUDGE_API_KEY` through a `secretKeyRef` each (not optional: a missing
  key stops the pod with `CreateContainerConfigError`), which the trainer reads before `OPENAI_API_KEY`
  (`sftjob_trainer.distill.api_key_from_env`, `sftjob_trainer.judge.api_key_from_env`); no pod gets a plain
  `OPENAI_API_KEY` from them.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sftjob_api.field_problems import FieldProblem
from sftjob_api.kuberay import RAYJOB_API_VERSION, RAYJOB_KIND
from sftjob_api.pod_env import ATTEMPT_ENV, CONFIG_ENV, JUDGE_KEY_ENV, TEACHER_KEY_ENV, role_prefix
from sftjob_api.pod_env import OPENAI_API_KEY as TEACHER_SECRET_KEY
from sftjob_api.types import API_VERSION, GROUP, KIND, ComputeSpec, SFTJob
from sftjob_operator.settings import Settings

ENTRYPOINT = "python -m sftjob_trainer"

LABEL_NAME = f"{GROUP}/name"
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "sftjob-operator"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"

# KubeRay derives RayCluster, Service and Pod names from the RayJob name; 47 keeps them within 63.
MAX_RAYJOB_NAME = 47
# The Ray version of the trainer image (pinned in pyproject's `trainer` extra).
RAY_VERSION = "2.60.0"

# The head runs only the driver (`python -m sftjob_trainer`, which coordinates and never trains):
# `num-cpus: 0` keeps Ray Train workers off it.
HEAD_CPU = "2"
HEAD_MEMORY = "8Gi"
SUBMITTER_CPU = "500m"
SUBMITTER_MEMORY = "512Mi"
WORKER_GROUP = "workers"
HEAD_CONTAINER = "ray-head"
WORKER_CONTAINER = "ray-worker"
SUBMITTER_CONTAINER = "ray-job-submitter"
# The trainer image runs as the `ray` user of the Ray base images (uid 1000, gid 100).
RUN_AS_USER = 1000
RUN_AS_GROUP = 100

SECRET_ROLES = ("model", "dataset", "output")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_COMPUTE_DEFAULTS = ComputeSpec()


def rayjob_name(job_name: str, attempt: int) -> str:
    """The RayJob name of an attempt: `<job>-a<attempt>`, at most 47 characters.

    Longer job names are cut and get a 6-hex-digit hash of the full name, so two long names
    that share a prefix still give different RayJobs.

    Args:
        job_name: The SFTJob name (a DNS-1123 label).
        attempt: The attempt number, from 1.

    Returns:
        A DNS-1123 label of at most 47 characters.
    """
    suffix = f"-a{attempt}"
    if len(job_name) + len(suffix) <= MAX_RAYJOB_NAME:
        return job_name + suffix
    digest = hashlib.sha256(job_name.encode()).hexdigest()[:6]
    keep = MAX_RAYJOB_NAME - len(suffix) - len(digest) - 1
    return f"{job_name[:keep].rstrip('-')}-{digest}{suffix}"


def job_config(job: SFTJob) -> dict[str, Any]:
    """The document the trainer receives in `SFTJOB_CONFIG` (an SFTJob without status)."""
    metadata = {"name": job.metadata.name}
    if job.metadata.namespace:
        metadata["namespace"] = job.metadata.namespace
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": job.spec.to_wire()}


def config_json(job: SFTJob) -> str:
    """`job_config` as compact, key-sorted JSON (the same job always gives the same bytes)."""
    return json.dumps(job_config(job), sort_keys=True, separators=(",", ":"))


def worker_resources(job: SFTJob, settings: Settings) -> tuple[str, str]:
    """CPU and memory per worker.

    The operator's `SFTJOB_DEFAULT_WORKER_CPU`/`_MEMORY` apply where the spec holds the API
    default (4 cores, 32Gi). The API server fills defaults in, so "left at the default" and
    "unset" cannot be told apart; a job that needs exactly the API default under an operator
    with other defaults states it with an equivalent quantity (e.g. `32768Mi`).
    """
    compute = job.spec.compute
    cpu = str(compute.cpus_per_worker)
    if settings.default_worker_cpu and compute.cpus_per_worker == _COMPUTE_DEFAULTS.cpus_per_worker:
        cpu = settings.default_worker_cpu
    memory = compute.memory_per_worker
    if settings.default_worker_memory and memory == _COMPUTE_DEFAULTS.memory_per_worker:
        memory = settings.default_worker_memory
    return cpu, memory


def secret_names(job: SFTJob) -> dict[str, str]:
    """The Secret referenced for each role that has one.

    The services first (`mlflow`, `wandb`), then `model`, `dataset`, `output`: storage credentials win a clash
    of plain keys in `envFrom`. The teacher's and the judge's Secrets are not among them: each reaches the pods
    through one `secretKeyRef` (`_env`).
    """
    spec = job.spec
    tracking = spec.tracking
    refs = {
        "mlflow": tracking.mlflow.secret_ref if tracking.mlflow else None,
        "wandb": tracking.wandb.secret_ref if tracking.wandb else None,
        "model": spec.model.secret_ref,
        "dataset": spec.dataset.secret_ref,
        "output": spec.output.secret_ref,
    }
    return {role: ref.name for role, ref in refs.items() if ref is not None}


def check_renderable(job: SFTJob) -> list[FieldProblem]:
    """Problems the API types accept but a RayJob or its pods cannot carry (checked with the spec).

    Args:
        job: A job that passed `check_document`.

    Returns:
        One problem per field that would make the RayJob or its pods fail at the API server.
    """
    problems = []
    spec = job.spec
    queue = spec.run_policy.queue_name
    if queue is not None and not (len(queue) <= 63 and _LABEL_VALUE.fullmatch(queue)):
        problems.append(
            FieldProblem(
                ("spec", "runPolicy", "queueName"), "must be a label value (at most 63 letters, digits, '-', '_', '.')"
            )
        )
    for key, value in spec.compute.node_selector.items():
        prefix, _, name = key.rpartition("/")
        if (prefix and not (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix))) or not (
            len(name) <= 63 and _LABEL_NAME.fullmatch(name)
        ):
            problems.append(FieldProblem(("spec", "compute", "nodeSelector", key), "key is not a label name"))
        elif not (len(value) <= 63 and _LABEL_VALUE.fullmatch(value)):
            problems.append(FieldProblem(("spec", "compute", "nodeSelector", key), "value is not a label value"))
    names: tuple[tuple[str, str | None], ...] = (
        ("priorityClassName", spec.compute.priority_class_name),
        ("serviceAccountName", spec.compute.service_account_name),
    )
    for field, object_name in names:
        if object_name is not None and not _DNS_SUBDOMAIN.fullmatch(object_name):
            problems.append(FieldProblem(("spec", "compute", field), "must be a DNS-1123 subdomain name"))
    return problems


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_GROUP,
        "fsGroup": RUN_AS_GROUP,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(job: SFTJob, attempt: int) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": CONFIG_ENV, "value": config_json(job)},
        {"name": ATTEMPT_ENV, "value": str(attempt)},
        {"name": "RAY_TRAIN_ENABLE_PRINT_PATCH", "value": "0"},
    ]
    judge = job.spec.evaluation.judge
    for name, secret in ((TEACHER_KEY_ENV, teacher_secret(job)),
                         (JUDGE_KEY_ENV, judge.secret_ref.name if judge and judge.secret_ref else None)):
        if secret is not None:
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": TEACHER_SECRET_KEY}}})
    return env


def teacher_secret(job: SFTJob) -> str | None:
    """The Secret of the distillation teacher's API key (`distillation.teacher.secretRef`), if any."""
    distillation = job.spec.distillation
    ref = distillation.teacher.secret_ref if distillation is not None else None
    return ref.name if ref is not None else None


def _env_from(job: SFTJob) -> list[dict[str, Any]]:
    secrets = secret_names(job)
    plain: list[dict[str, Any]] = []
    for name in secrets.values():
        entry = {"secretRef": {"name": name}}
        if entry not in plain:
            plain.append(entry)
    prefixed = [{"prefix": role_prefix(role), "secretRef": {"name": name}} for role, name in secrets.items()]
    return plain + prefixed


def _pod_spec(job: SFTJob, container: dict[str, Any], *, worker: bool) -> dict[str, Any]:
    compute = job.spec.compute
    spec: dict[str, Any] = {"containers": [container], "securityContext": _pod_security()}
    if worker:
        if compute.node_selector:
            spec["nodeSelector"] = dict(compute.node_selector)
        if compute.tolerations:
            spec["tolerations"] = [t.to_wire() for t in compute.tolerations]
        # NCCL exchanges data through shared memory; the container default (64Mi) is too small.
        spec["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    if compute.priority_class_name:
        spec["priorityClassName"] = compute.priority_class_name
    if compute.service_account_name:
        spec["serviceAccountName"] = compute.service_account_name
    return spec


def build_rayjob(
    job: SFTJob, attempt: int, settings: Settings, *, active_deadline_seconds: int | None = None
) -> dict[str, Any]:
    """The RayJob (ray.io/v1) that runs one attempt of `job`.

    Args:
        job: A validated SFTJob. `metadata.uid`, when present, becomes the controller ownerReference.
        attempt: The attempt number, from 1.
        settings: Operator settings (default image and worker resources).
        active_deadline_seconds: The attempt's deadline; default `spec.runPolicy.activeDeadlineSeconds`
            (the operator passes what is left of the job's deadline for later attempts).

    Returns:
        The manifest, ready to be created.
    """
    name = job.name
    spec = job.spec
    compute = spec.compute
    image = compute.image or settings.trainer_image
    labels = {LABEL_NAME: name, LABEL_ATTEMPT: str(attempt), LABEL_MANAGED_BY: MANAGED_BY}
    metadata: dict[str, Any] = {"name": rayjob_name(name, attempt)}
    if job.metadata.namespace:
        metadata["namespace"] = job.metadata.namespace
    metadata["labels"] = {**labels, **({LABEL_QUEUE: spec.run_policy.queue_name} if spec.run_policy.queue_name else {})}
    uid = job.metadata.uid
    if uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": name,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]

    env, env_from = _env(job, attempt), _env_from(job)
    head_container: dict[str, Any] = {
        "name": HEAD_CONTAINER,
        "image": image,
        "env": env,
        "resources": {
            "requests": {"cpu": HEAD_CPU, "memory": HEAD_MEMORY},
            "limits": {"cpu": HEAD_CPU, "memory": HEAD_MEMORY},
        },
        "securityContext": _container_security(),
    }
    cpu, memory = worker_resources(job, settings)
    worker_limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if compute.gpus_per_worker:
        worker_limits["nvidia.com/gpu"] = str(compute.gpus_per_worker)
    worker_container: dict[str, Any] = {
        "name": WORKER_CONTAINER,
        "image": image,
        "env": env,
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": worker_limits},
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],  # noqa: S108  (shared memory, not a temp file)
    }
    if env_from:
        head_container["envFrom"] = env_from
        worker_container["envFrom"] = env_from
    pod_labels = {"labels": labels}
    submitter: dict[str, Any] = {
        "name": SUBMITTER_CONTAINER,
        "image": image,
        "resources": {
            "requests": {"cpu": SUBMITTER_CPU, "memory": SUBMITTER_MEMORY},
            "limits": {"cpu": SUBMITTER_CPU, "memory": SUBMITTER_MEMORY},
        },
        "securityContext": _container_security(),
    }

    rayjob_spec: dict[str, Any] = {
        "entrypoint": ENTRYPOINT,
        "shutdownAfterJobFinishes": True,
        # Retries are the operator's: each attempt is a new RayJob with its own number.
        "backoffLimit": 0,
        "suspend": spec.run_policy.suspend,
        "submitterPodTemplate": {
            "metadata": pod_labels,
            "spec": {
                "restartPolicy": "Never",
                "containers": [submitter],
                "securityContext": _pod_security(),
                **({"serviceAccountName": compute.service_account_name} if compute.service_account_name else {}),
            },
        },
        "rayClusterSpec": {
            "rayVersion": RAY_VERSION,
            "headGroupSpec": {
                # All interfaces: the submitter pod reaches the dashboard through the head Service.
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},  # noqa: S104
                "template": {"metadata": pod_labels, "spec": _pod_spec(job, head_container, worker=False)},
            },
            "workerGroupSpecs": [
                {
                    "groupName": WORKER_GROUP,
                    "replicas": compute.num_workers,
                    "minReplicas": compute.num_workers,
                    "maxReplicas": compute.num_workers,
                    "rayStartParams": {},
                    "template": {"metadata": pod_labels, "spec": _pod_spec(job, worker_container, worker=True)},
                }
            ],
        },
    }
    deadline = (
        active_deadline_seconds if active_deadline_seconds is not None else spec.run_policy.active_deadline_seconds
    )
    if deadline is not None:
        rayjob_spec["activeDeadlineSeconds"] = max(1, int(deadline))
    if spec.run_policy.startup_deadline_seconds is not None:
        # Each attempt gets the whole window: KubeRay counts it from the RayJob's own status.startTime.
        rayjob_spec["preRunningDeadlineSeconds"] = spec.run_policy.startup_deadline_seconds
    manifest = {"apiVersion": RAYJOB_API_VERSION, "kind": RAYJOB_KIND, "metadata": metadata, "spec": rayjob_spec}
    # A JSON round trip leaves no shared sub-objects (the env list is used twice, the labels four times).
    result: dict[str, Any] = json.loads(json.dumps(manifest))
    return result
