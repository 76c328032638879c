"""The CRD is generated from the types, structural, fully described, and enforces the same rules."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from tests.support.crd_check import CRD_PATH, load_schema, server_errors

from sftjob_api.crd import render_crd

REPO = Path(__file__).resolve().parents[2]
SFTJOB = REPO / ".venv" / "bin" / "sftjob"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for key, sub in schema.get("properties", {}).items():
        nodes += _walk(sub, f"{path}.{key}")
    if "items" in schema:
        nodes += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        nodes += _walk(schema["additionalProperties"], f"{path}{{}}")
    return nodes


def test_checked_in_crd_matches_the_types() -> None:
    rendered = subprocess.run([str(SFTJOB), "crd"], capture_output=True, text=True, check=True).stdout
    assert rendered == CRD_PATH.read_text(), "crds/sftjob.yaml is stale: run `sftjob crd > crds/sftjob.yaml`"


def test_crd_is_a_valid_custom_resource_definition() -> None:
    kubernetes_validate.validate(render_crd(), desired_version="1.30", strict=True)


def test_every_field_has_a_description() -> None:
    # List items and map values are not fields; `kubectl explain` describes the field that holds them.
    fields = [(p, n) for p, n in _walk(load_schema()) if p and not p.endswith(("[]", "{}"))]
    missing = [path for path, node in fields if not node.get("description")]
    assert missing == []


def test_schema_is_structural() -> None:
    for path, node in _walk(load_schema()):
        for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "const", "title", "$defs"):
            assert forbidden not in node, f"{path or '<root>'} has {forbidden}"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        if node.get("type") == "object" and "properties" in node:
            assert "additionalProperties" not in node, path
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(bound, True), bool), f"{path}: {bound} must be boolean in OpenAPI 3.0"


def test_every_string_is_bounded_for_cel_cost() -> None:
    # Unbounded strings/lists under a CEL `self == oldSelf` rule make the API server reject the CRD
    # (estimated cost over budget), so every one carries maxLength / maxItems / maxProperties.
    spec = load_schema()["properties"]["spec"]
    for path, node in _walk(spec, ".spec"):
        if node.get("type") == "string":
            assert "maxLength" in node or "enum" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("type") == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path


def test_printer_columns() -> None:
    version = render_crd()["spec"]["versions"][0]
    columns = {c["name"]: c.get("priority", 0) for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Phase": 0, "Method": 0, "Progress": 0, "Loss": 0, "ETA": 0, "Score": 0, "Age": 0,
        "Model": 1, "Step": 1, "Eval": 1, "Attempt": 1, "RayJob": 1,
    }
    assert version["subresources"] == {"status": {}}
    names = render_crd()["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("SFTJob", "sftjobs", ["sft"])


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_the_crd_schema_and_cel(example: Path) -> None:
    for document in yaml.safe_load_all(example.read_text()):
        assert server_errors(document) == []


def _example() -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / "lora-chat.yaml").read_text())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["spec"]["method"].update(type="qlora"), "qlora needs quantization"),
        (lambda d: d["spec"]["method"].update(quantization={"bits": 4}), "quantization applies only to type qlora"),
        (lambda d: d["spec"]["method"].update(type="freeze"), "type freeze needs freeze.trainableLayers"),
        (lambda d: d["spec"]["dataset"].update(validation={"uri": "s3://bucket-a/v.jsonl"}), "not both"),
        (lambda d: d["spec"]["dataset"].update(maxSeqLength=8), "at least 16"),
        (lambda d: d["spec"]["dataset"].update(maxSeqLength="huge"), "at least 16"),
        (lambda d: d["spec"]["output"].update(uri="s3://bucket-a/x/../../y"), "'..'"),
        (lambda d: d["metadata"].update(name="x" * 64), "at most 63"),
        (lambda d: d["spec"].setdefault("evaluation", {}).update(maxForgetting=1.1), "needs a reference set"),
    ],
)
def test_cel_rules_reject_what_the_types_reject(mutate: Any, message: str) -> None:
    from sftjob_api.field_problems import check_document

    document = _example()
    mutate(document)
    errors = server_errors(document)
    assert any(message in e for e in errors), errors
    job, problems = check_document(document)
    assert job is None and problems


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("model", "source", "hf://org/other"),
        ("dataset", "trainOn", "all"),
        ("method", "type", "full"),
        ("hyperparameters", "epochs", 5),
        ("output", "uri", "s3://elsewhere/sft"),
    ],
)
def test_running_job_inputs_are_immutable(section: str, field: str, value: Any) -> None:
    old = _example()
    new = copy.deepcopy(old)
    new["spec"][section][field] = value
    assert server_errors(new) == []
    assert any(f"{section} " in e and "immutable" in e for e in server_errors(new, old=old))


def test_run_policy_and_compute_stay_mutable() -> None:
    old = _example()
    new = copy.deepcopy(old)
    new["spec"]["runPolicy"]["suspend"] = True
    new["spec"]["compute"]["numWorkers"] = 4
    assert server_errors(new, old=old) == []
