"""Render the SFTJob CustomResourceDefinition from the pydantic types.

Pydantic emits JSON Schema 2020-12; the API server wants a *structural* OpenAPI 3.0 schema:
no `$ref`, no `anyOf` with types inside, no `const`, boolean `exclusiveMinimum`, and
`x-kubernetes-*` extensions. `structural_schema` does that translation; `render_crd` wraps it
in the CRD with the status subresource, printer columns and CEL rules.
"""

from __future__ import annotations

import copy
from typing import Any

from sftjob_api.types import (
    API_VERSION,
    GROUP,
    KIND,
    MAX_JOB_NAME,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    SFTJob,
)

_DROP_KEYS = {"title"}
_SCALARS = (str, int, float, bool)


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _resolve({**target, **siblings}, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _merge_branch(node: dict[str, Any], branch: dict[str, Any]) -> dict[str, Any]:
    """Replace an `anyOf` node by one branch, keeping the node's own description and default."""
    merged = {**branch, **{k: v for k, v in node.items() if k != "anyOf"}}
    return merged


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {k: v for k, v in node.items() if k not in _DROP_KEYS}

    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        types = {b.get("type") for b in branches}
        if len(branches) == 1:
            node = _merge_branch(node, branches[0])
        elif types == {"integer", "string"}:
            # An int-or-string (e.g. maxSeqLength: 1024 | "auto"): the CEL rule on the field checks the string.
            node = {k: v for k, v in node.items() if k != "anyOf"}
            node["x-kubernetes-int-or-string"] = True
        else:
            raise ValueError(f"cannot express anyOf {branches} in a structural schema")
        return _structural(node)

    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[flag] = node.pop(bound)
            node[bound] = True
    if "default" in node and not isinstance(node["default"], _SCALARS):
        # Object and list defaults are applied by the types; the API server only defaults scalars.
        del node["default"]
    if node.get("type") == "object" and "properties" in node:
        node.pop("additionalProperties", None)

    return {key: _structural(value) for key, value in node.items()}


def structural_schema() -> dict[str, Any]:
    """The SFTJob openAPIV3Schema, structural and with a description on every field.

    Returns:
        The schema as a plain dict.
    """
    raw = SFTJob.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _structural(_resolve(raw, defs))
    # metadata is owned by the API server: only the name may be restricted, via CEL at the root.
    schema["properties"]["metadata"] = {"type": "object", "description": "Standard object metadata."}
    schema["properties"].pop("apiVersion")
    schema["properties"].pop("kind")
    schema["properties"] = {
        "apiVersion": {
            "type": "string",
            "description": "APIVersion defines the versioned schema of this representation of an object.",
        },
        "kind": {"type": "string", "description": "Kind is a string value representing the REST resource."},
        **schema["properties"],
    }
    schema["required"] = ["spec"]
    schema["x-kubernetes-validations"] = [
        {
            "rule": f"size(self.metadata.name) <= {MAX_JOB_NAME}",
            "message": f"metadata.name must be at most {MAX_JOB_NAME} characters (it labels every child object)",
        }
    ]
    return schema


def _column(name: str, type_: str, path: str, description: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


PRINTER_COLUMNS = [
    _column("Phase", "string", ".status.phase", "Lifecycle phase"),
    _column("Method", "string", ".spec.method.type", "Fine-tuning method"),
    _column("Progress", "number", ".status.progress.percentage", "Percent of optimizer steps done"),
    _column("Loss", "number", ".status.metrics.trainLoss", "Latest training loss"),
    _column("ETA", "string", ".status.progress.eta", "Estimated time left"),
    _column("Score", "string", ".status.evaluation.score", "Headline task metric, fine-tuned (base)"),
    _column("Age", "date", ".metadata.creationTimestamp", "Time since creation"),
    _column("Model", "string", ".spec.model.source", "Base model", priority=1),
    _column("Step", "integer", ".status.progress.step", "Optimizer steps done", priority=1),
    _column("Eval", "number", ".status.metrics.evalLoss", "Latest evaluation loss", priority=1),
    _column("Attempt", "integer", ".status.attempt", "Current attempt", priority=1),
    _column("RayJob", "string", ".status.rayJob.name", "RayJob of the current attempt", priority=1),
]


def render_crd() -> dict[str, Any]:
    """The SFTJob CustomResourceDefinition (apiextensions.k8s.io/v1).

    Returns:
        The CRD manifest as a plain dict, ready to be dumped as YAML.
    """
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["all", "ml"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": structural_schema()},
                }
            ],
        },
    }


__all__ = ["API_VERSION", "PRINTER_COLUMNS", "render_crd", "structural_schema"]
