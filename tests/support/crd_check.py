"""Check documents the way the API server would: the CRD's openAPIV3Schema plus its CEL rules.

The API server evaluates `x-kubernetes-validations` with CEL; cel-python evaluates the same
expressions here, so the CEL rules in crds/sftjob.yaml are tested, not just rendered.
Transition rules (those using `oldSelf`) run only when an old object is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import yaml
from openapi_schema_validator import OAS30Validator

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "crds" / "sftjob.yaml"

_ENV = celpy.Environment()


def load_schema() -> dict[str, Any]:
    """The openAPIV3Schema of the checked-in CRD."""
    crd = yaml.safe_load(CRD_PATH.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def schema_errors(document: Any, schema: dict[str, Any] | None = None) -> list[str]:
    """OpenAPI 3.0 schema violations of `document`."""
    validator = OAS30Validator(schema or load_schema())
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


def _evaluate(rule: str, value: Any, old: Any) -> bool:
    activation = {"self": celpy.json_to_cel(value)}
    if old is not None:
        activation["oldSelf"] = celpy.json_to_cel(old)
    result = _ENV.program(_ENV.compile(rule)).evaluate(activation)
    return bool(result)


def cel_errors(document: Any, old: Any = None, schema: dict[str, Any] | None = None, path: str = "") -> list[str]:
    """Messages of the CEL rules that `document` (and, for transition rules, `old`) violates."""
    schema = schema if schema is not None else load_schema()
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"] and old is None:
            continue
        if not _evaluate(rule["rule"], document, old):
            errors.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(document, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in document:
                old_value = old.get(key) if isinstance(old, dict) else None
                errors += cel_errors(document[key], old_value, sub, f"{path}.{key}")
    if isinstance(document, list) and "items" in schema:
        for i, item in enumerate(document):
            errors += cel_errors(item, None, schema["items"], f"{path}[{i}]")
    return errors


def apply_defaults(document: Any, schema: dict[str, Any] | None = None) -> Any:
    """Fill `default`s into the objects present, as the API server does before validation."""
    schema = schema if schema is not None else load_schema()
    if isinstance(document, dict):
        out = dict(document)
        for key, sub in schema.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = sub["default"]
            if key in out:
                out[key] = apply_defaults(out[key], sub)
        return out
    if isinstance(document, list) and "items" in schema:
        return [apply_defaults(item, schema["items"]) for item in document]
    return document


def server_errors(document: Any, old: Any = None) -> list[str]:
    """What the API server would reject: defaults applied, then schema and CEL checks."""
    schema = load_schema()
    document = apply_defaults(document, schema)
    old = apply_defaults(old, schema) if old is not None else None
    errors = schema_errors(document, schema)
    return errors or cel_errors(document, old, schema)
