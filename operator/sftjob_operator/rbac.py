"""The RBAC the operator needs, declared where the API calls are made.

Every Kubernetes call in `kube.py` carries `@requires(apiGroup, resource, verb)`. The decorator
records the permission in a module-level registry and counts the call (and its failures) in the
Prometheus metrics. `permissions.required_rbac_rules()` merges that registry with what Kopf itself does for
our handlers (`policy_rules`); the Helm chart's ClusterRole must equal it (the chart's test compares them).
This module never imports `kube.py`: the registry fills as `kube.py` is imported.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from sftjob_api.kuberay import RAYJOB_GROUP, RAYJOB_PLURAL
from sftjob_api.types import GROUP, PLURAL
from sftjob_operator import metrics

F = TypeVar("F", bound=Callable[..., Any])

Permission = tuple[str, str, str]
"""(apiGroup, resource, verb); subresources as `sftjobs/status`."""

_REGISTRY: set[Permission] = set()

# What Kopf does on its own for the handlers in handlers.py (a standalone operator, no peering):
KOPF_PERMISSIONS: frozenset[Permission] = frozenset(
    {
        # Discovery of custom resources, and of namespaces when watching several of them.
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        # Watching SFTJobs; patching them for its finalizer (timers need one) and its annotations.
        (GROUP, PLURAL, "list"),
        (GROUP, PLURAL, "watch"),
        (GROUP, PLURAL, "patch"),
        # Watching RayJobs (the on.event handler that reacts to KubeRay's status changes).
        (RAYJOB_GROUP, RAYJOB_PLURAL, "list"),
        (RAYJOB_GROUP, RAYJOB_PLURAL, "watch"),
        # Posting the events that kopf.event() queues.
        ("", "events", "create"),
    }
)


def requires(api_group: str, resource: str, verb: str) -> Callable[[F], F]:
    """Declare the permission an API call needs; count its calls and failures.

    Args:
        api_group: The API group ("" for the core group).
        resource: The plural resource, `resource/subresource` for a subresource.
        verb: The RBAC verb (get, list, watch, create, update, patch, delete).

    Returns:
        The decorator; the decorated function gets a `__rbac__` attribute with the permission.
    """
    permission = (api_group, resource, verb)

    def decorate(fn: F) -> F:
        _REGISTRY.add(permission)

        def fail(err: Exception) -> None:
            code = str(getattr(err, "status", 0) or 0)
            metrics.API_ERRORS.labels(resource, verb, code).inc()

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
                metrics.API_REQUESTS.labels(resource, verb).inc()
                try:
                    return await fn(*args, **kwargs)
                except Exception as err:
                    fail(err)
                    raise

            wrapped: Any = wrapped_async
        else:

            @functools.wraps(fn)
            def wrapped_sync(*args: Any, **kwargs: Any) -> Any:
                metrics.API_REQUESTS.labels(resource, verb).inc()
                try:
                    return fn(*args, **kwargs)
                except Exception as err:
                    fail(err)
                    raise

            wrapped = wrapped_sync
        wrapped.__rbac__ = permission
        return wrapped

    return decorate


def declared_permissions() -> frozenset[Permission]:
    """The permissions declared by `@requires` so far (all of `kube.py`'s once it is imported)."""
    return frozenset(_REGISTRY)


def policy_rules(permissions: frozenset[Permission]) -> list[dict[str, list[str]]]:
    """ClusterRole rules granting `permissions` and Kopf's own: one PolicyRule per (apiGroup, resource), sorted.

    Secrets: `get` is cluster-wide in RBAC terms (the names are the users' `secretRef`s, unknown
    in advance), but the operator reads only the Secret named in a job's `spec.output.secretRef`.

    Returns:
        PolicyRule dicts (`apiGroups`, `resources`, `verbs`), sorted by group then resource,
        verbs sorted.
    """
    verbs: dict[tuple[str, str], set[str]] = {}
    for group, resource, verb in permissions | KOPF_PERMISSIONS:
        verbs.setdefault((group, resource), set()).add(verb)
    return [
        {"apiGroups": [group], "resources": [resource], "verbs": sorted(verbs[(group, resource)])}
        for group, resource in sorted(verbs)
    ]
