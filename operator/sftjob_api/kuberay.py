"""KubeRay's identifiers: the RayJob resource the operator creates, watches and reads back.

One place for what the manifest builder, the Kubernetes client, the Kopf handlers, the RBAC
declarations and the tests' API server all have to spell the same way.
"""

from __future__ import annotations

RAYJOB_GROUP = "ray.io"
"""KubeRay's API group."""

RAYJOB_VERSION = "v1"
"""The RayJob API version the operator speaks (KubeRay 1.x)."""

RAYJOB_API_VERSION = f"{RAYJOB_GROUP}/{RAYJOB_VERSION}"
"""`apiVersion` of a RayJob manifest."""

RAYJOB_KIND = "RayJob"
"""`kind` of a RayJob manifest."""

RAYJOB_PLURAL = "rayjobs"
"""The RayJob resource name in API paths and RBAC rules."""

RAYJOB_RESOURCE = (RAYJOB_GROUP, RAYJOB_VERSION, RAYJOB_PLURAL)
"""(group, version, plural), as Kopf's handler decorators take them."""
