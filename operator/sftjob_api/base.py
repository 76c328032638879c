"""The shared base model and field types of the SFTJob API.

Every API type derives from `ApiModel`: camelCase on the wire, snake_case in Python, unknown
fields rejected, and the docstring under each field kept as its description (it becomes the
`kubectl explain` text of the generated CRD).

A model may carry CEL rules in `cel_rules`. They are emitted as `x-kubernetes-validations` in
the CRD, and the model mirrors each one in Python (a `model_validator`), so `sftjob validate`
and the API server reject the same documents.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetJsonSchemaHandler
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue

# Kubernetes object names (DNS-1123 subdomain) are at most 253 characters.
MAX_NAME = 253
# Free text on the resource (messages, templates) is bounded so CEL cost estimates stay finite.
MAX_TEXT = 32768
# URIs: S3 keys are at most 1024 bytes; the scheme and bucket fit in the rest.
MAX_URI = 2048


class CelRule(BaseModel):
    """One `x-kubernetes-validations` entry."""

    model_config = ConfigDict(frozen=True)

    rule: str
    message: str
    field_path: str | None = None
    """The field the API server blames, e.g. `.quantization`."""


class ApiModel(BaseModel):
    """Base of every SFTJob API type."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=False,
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        schema = handler(core_schema)
        if cls.cel_rules:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [
                {"rule": r.rule, "message": r.message} | ({"fieldPath": r.field_path} if r.field_path else {})
                for r in cls.cel_rules
            ]
        return schema

    def to_wire(self) -> dict[str, Any]:
        """Serialise to the camelCase form the API server stores, without unset optionals."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# The same URI rules for the API server: a pattern (RE2) and a CEL rule per string type.
_S3 = r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?"
_HF = r"hf://[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+(@[A-Za-z0-9_./-]+)?"
# A job's paths and keys stay below what they name (no escaping an output prefix or a mounted folder).
NO_PARENT_MESSAGE = ("must not contain '..' path segments: write the path without them (an absolute path, or one "
                     "below the job file's folder)")
_NO_PARENT = {"rule": r"!self.matches('(^|/)[.][.](/|$)')", "message": NO_PARENT_MESSAGE}
_SEGMENT_ESCAPE = re.compile(r"(^|/)\.\.(/|$)")


def _no_parent_segments(value: str) -> str:
    if _SEGMENT_ESCAPE.search(value):
        raise ValueError(NO_PARENT_MESSAGE)
    return value


def _s3_or_path(value: str) -> str:
    if value.startswith("s3://"):
        if not re.fullmatch(_S3, value):
            bucket = value[len("s3://") :].split("/", 1)[0]
            raise ValueError(f"'{bucket}' is not a valid S3 bucket name (3-63 lowercase letters, digits, '.', '-')")
        return value
    if "://" in value:
        scheme = value.split("://", 1)[0]
        raise ValueError(f"unsupported scheme '{scheme}://'; use s3://bucket/key or a filesystem path")
    return value


def _model_source(value: str) -> str:
    if value.startswith("hf://"):
        if not re.fullmatch(_HF, value):
            raise ValueError(f"'{value}' is not hf://org/name[@revision]")
        return value
    return _s3_or_path(value)



def check_storage_uri(value: str) -> str:
    """Validate an `s3://bucket/key` URI or a filesystem path.

    Args:
        value: The URI.

    Returns:
        The URI unchanged.

    Raises:
        ValueError: On a '..' segment, an invalid bucket or an unsupported scheme.
    """
    return _s3_or_path(_no_parent_segments(value))


def matches(regex: str, meaning: str) -> AfterValidator:
    """A validator that checks a string against `regex` and fails with `meaning` instead of the regex.

    Pair it with `Field(json_schema_extra={"pattern": regex})` so the CRD enforces the same pattern.

    Args:
        regex: Anchored, RE2-compatible pattern.
        meaning: What a valid value looks like, for the error message.

    Returns:
        The pydantic validator.
    """
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} is not {meaning}")
        return value

    return AfterValidator(check)


Text = Annotated[str, Field(max_length=MAX_TEXT)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME)]
StorageUri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URI,
        json_schema_extra={"pattern": f"^({_S3}|[^:]*)$", "x-kubernetes-validations": [_NO_PARENT]},
    ),
    AfterValidator(_no_parent_segments),
    AfterValidator(_s3_or_path),
]
ModelUri = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_URI,
        json_schema_extra={"pattern": f"^({_HF}|{_S3}|[^:]*)$", "x-kubernetes-validations": [_NO_PARENT]},
    ),
    AfterValidator(_no_parent_segments),
    AfterValidator(_model_source),
]
