"""Every Kubernetes API call the operator makes (besides Kopf's own watching), one method per call.

Each public method carries `@requires(apiGroup, resource, verb)` (see rbac.py): that is how the
ClusterRole is derived, and a test fails when a method lacks it. The official client is
synchronous; calls run in worker threads so that the event loop (Kopf's, and in tests the one
serving the emulator) never blocks. Secret values never leave `read_secret`'s return value: they
are not logged, and errors name the Secret only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

import kopf
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from sftjob_api.kuberay import RAYJOB_GROUP, RAYJOB_PLURAL, RAYJOB_VERSION
from sftjob_api.types import GROUP, PLURAL, VERSION
from sftjob_operator.rbac import requires

__all__ = ["ApiError", "KubeClient"]

ApiError = ApiException
"""What a failed call raises (the client's exception), for callers that treat a call as optional."""

# Concurrent calls share one connection pool; the client's default (4) would drop connections.
_POOL_SIZE = 32


def _load_api_client() -> k8s.ApiClient:
    configuration = k8s.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        k8s_config.load_incluster_config(client_configuration=configuration)
    else:
        # Read KUBECONFIG now, not the path the client computed when it was imported.
        k8s_config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
    configuration.connection_pool_maxsize = _POOL_SIZE
    return k8s.ApiClient(configuration)


T = TypeVar("T")


async def _unless_missing(call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run a blocking client call in a worker thread; None when its object does not exist (404).

    Gets read "absent" as None, and deletes treat an object already gone as deleted.
    """
    try:
        return await asyncio.to_thread(call, *args, **kwargs)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


class KubeClient:
    """The operator's Kubernetes API calls."""

    def __init__(self, api_client: k8s.ApiClient | None = None) -> None:
        api = api_client or _load_api_client()
        self._custom = k8s.CustomObjectsApi(api)
        self._core = k8s.CoreV1Api(api)

    # ------------------------------------------------------------------------------------- SFTJobs

    @requires(GROUP, PLURAL, "get")
    async def get_sftjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The SFTJob, or None when it does not exist."""
        return await _unless_missing(self._custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name)

    @requires(GROUP, f"{PLURAL}/status", "patch")
    async def replace_sftjob_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Replace the whole `.status` (a JSON patch `add /status`, so removed fields go away)."""
        patch = [{"op": "add", "path": "/status", "value": dict(status)}]
        await asyncio.to_thread(
            self._custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, PLURAL, name, patch
        )

    @requires(GROUP, PLURAL, "delete")
    async def delete_sftjob(self, namespace: str, name: str) -> None:
        """Delete the SFTJob (its RayJobs follow through their ownerReferences); absent is fine."""
        await _unless_missing(
            self._custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            propagation_policy="Background",
        )

    # ------------------------------------------------------------------------------------- RayJobs

    @requires(RAYJOB_GROUP, RAYJOB_PLURAL, "get")
    async def get_rayjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The RayJob, or None when it does not exist."""
        return await _unless_missing(
            self._custom.get_namespaced_custom_object, RAYJOB_GROUP, RAYJOB_VERSION, namespace, RAYJOB_PLURAL, name
        )

    @requires(RAYJOB_GROUP, RAYJOB_PLURAL, "create")
    async def create_rayjob(self, manifest: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create a RayJob; None when one of that name already exists (409)."""
        namespace = manifest["metadata"]["namespace"]
        try:
            return await asyncio.to_thread(
                self._custom.create_namespaced_custom_object,
                RAYJOB_GROUP,
                RAYJOB_VERSION,
                namespace,
                RAYJOB_PLURAL,
                dict(manifest),
            )
        except ApiException as err:
            if err.status == 409:
                return None
            raise

    @requires(RAYJOB_GROUP, RAYJOB_PLURAL, "patch")
    async def set_rayjob_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        """Set a RayJob's `spec.suspend` (KubeRay then deletes or recreates its Ray cluster)."""
        await asyncio.to_thread(
            self._custom.patch_namespaced_custom_object,
            RAYJOB_GROUP,
            RAYJOB_VERSION,
            namespace,
            RAYJOB_PLURAL,
            name,
            {"spec": {"suspend": suspend}},
        )

    @requires(RAYJOB_GROUP, RAYJOB_PLURAL, "delete")
    async def delete_rayjob(self, namespace: str, name: str) -> None:
        """Delete a RayJob and, in the background, its Ray cluster; absent is fine."""
        await _unless_missing(
            self._custom.delete_namespaced_custom_object,
            RAYJOB_GROUP,
            RAYJOB_VERSION,
            namespace,
            RAYJOB_PLURAL,
            name,
            propagation_policy="Background",
        )

    # ----------------------------------------------------------------------------------------- Pods

    @requires("", "pods", "list")
    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """The pods of one namespace that match a label selector, as plain dicts (for the pod diagnosis).

        Unparsed by the client: its model classes would cost a deep conversion of every pod spec, and with the
        content preloaded it would log whole pod bodies at DEBUG level.
        """
        response = await asyncio.to_thread(
            self._core.list_namespaced_pod, namespace, label_selector=selector, _preload_content=False
        )
        items: list[dict[str, Any]] = json.loads(response.data).get("items") or []
        return items

    # ------------------------------------------------------------------------------ Secrets, events

    @requires("", "secrets", "get")
    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The decoded keys of a Secret, or None when it does not exist. Never log the result."""
        # Unparsed: with its content preloaded, the client would log the body at DEBUG level.
        response = await _unless_missing(self._core.read_namespaced_secret, name, namespace, _preload_content=False)
        if response is None:
            return None
        data = json.loads(response.data).get("data") or {}
        return {key: base64.b64decode(value).decode("utf-8", "replace") for key, value in data.items()}

    @requires("", "events", "create")
    def post_event(self, obj: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        """Queue an event on an object; Kopf posts it in the background (with retries)."""
        ref = {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "metadata": {key: obj["metadata"].get(key) for key in ("name", "namespace", "uid")},
        }
        kopf.event(cast(Any, ref), type=type, reason=reason, message=message)
