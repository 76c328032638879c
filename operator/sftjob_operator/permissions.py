"""The ClusterRole the operator needs: every `@requires` of `kube.py` merged with what Kopf does itself.

A module of its own so that `rbac.py` (the registry) never imports `kube.py` (which uses the registry).
"""

from __future__ import annotations

import sftjob_operator.kube  # noqa: F401  (importing it runs the @requires decorators)
from sftjob_operator.rbac import declared_permissions, policy_rules


def required_rbac_rules() -> list[dict[str, list[str]]]:
    """The ClusterRole rules: one PolicyRule per (apiGroup, resource), sorted (`rbac.policy_rules`)."""
    return policy_rules(declared_permissions())


__all__ = ["required_rbac_rules"]
