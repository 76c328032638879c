"""The resource's identity (group, version, kind), shared field types, Secret references and metadata."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from sftjob_api.base import MAX_NAME, ApiModel, Name, matches

GROUP = "sftjob.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SFTJob"
PLURAL = "sftjobs"
SINGULAR = "sftjob"
SHORT_NAMES = ("sft",)

# The SFTJob name becomes the `sftjob.dev/name` label on every child; label values are at most 63.
MAX_JOB_NAME = 63
# Attempts and checkpoints kept in status; older entries are dropped (the status must stay small).
MAX_HISTORY = 10

# Kubernetes resource quantity, e.g. "32Gi", "500M", "1.5" (the operator's settings check the same pattern).
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"
# DNS-1123 label: names and namespaces, at most MAX_DNS_LABEL characters (the operator's settings check it too).
MAX_DNS_LABEL = 63
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
Quantity = Annotated[
    str,
    Field(max_length=32, json_schema_extra={"pattern": QUANTITY_PATTERN}),
    matches(QUANTITY_PATTERN, "a Kubernetes quantity such as 32Gi or 500M"),
]
DnsLabel = Annotated[
    str,
    Field(max_length=MAX_DNS_LABEL, json_schema_extra={"pattern": DNS_LABEL_PATTERN}),
    matches(
        DNS_LABEL_PATTERN, "a DNS-1123 label (lowercase letters, digits and '-', starting and ending alphanumeric)"
    ),
]


class SecretReference(ApiModel):
    """A Secret in the SFTJob's namespace whose keys are exposed to the trainer as environment variables."""

    name: Name
    """Name of the Secret. Its keys become environment variables of the trainer pods (e.g.
    `HF_TOKEN`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`). Values are never
    copied into the RayJob, status, events or logs."""


# An OpenAI-compatible endpoint or a tracking server: http(s), a host, an optional port and path.
_HTTP_URL = r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/-]*)?$"
HttpUrl = Annotated[
    str,
    Field(max_length=MAX_NAME, json_schema_extra={"pattern": _HTTP_URL}),
    matches(_HTTP_URL, "an http:// or https:// URL such as http://judge.llm.svc:8000/v1"),
]


class ObjectMeta(ApiModel):
    """The parts of metav1.ObjectMeta the API checks; everything else passes through."""

    model_config = ConfigDict(**{**ApiModel.model_config, "extra": "allow"})

    name: DnsLabel | None = None
    """Job name; a DNS-1123 label of at most 63 characters (it labels every child object)."""

    namespace: DnsLabel | None = None
    """Namespace of the job."""

    uid: str | None = None
    """The object's UID, set by the API server (owner references of the children point at it)."""
