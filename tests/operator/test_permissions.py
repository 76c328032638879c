"""Every Kubernetes call is declared with @requires, and required_rbac_rules() is the merged, sorted ClusterRole."""

from __future__ import annotations

import inspect

from sftjob_operator import kube, permissions, rbac


def _public_callables() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    for name, member in vars(kube).items():
        if name.startswith("_") or getattr(member, "__module__", None) != kube.__name__:
            continue  # private, or imported
        if inspect.isclass(member):
            for method_name, method in vars(member).items():
                if not method_name.startswith("_") and callable(method):
                    found.append((f"{name}.{method_name}", method))
        elif callable(member):
            found.append((name, member))
    return found


def test_every_public_call_in_kube_declares_its_permission() -> None:
    calls = _public_callables()
    assert len(calls) >= 8, calls
    missing = [name for name, fn in calls if not hasattr(fn, "__rbac__")]
    assert missing == [], f"add @requires(group, resource, verb) to: {missing}"


def test_the_rules_are_merged_sorted_policy_rules() -> None:
    rules = permissions.required_rbac_rules()
    keys = [(r["apiGroups"][0], r["resources"][0]) for r in rules]
    assert keys == sorted(set(keys)), "one rule per (apiGroup, resource), sorted"
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}
        assert rule["verbs"] == sorted(set(rule["verbs"]))
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]


def test_the_rules_cover_our_calls_and_kopfs_needs() -> None:
    grants = {
        (g, r, v)
        for rule in permissions.required_rbac_rules()
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    declared = {fn.__rbac__ for _, fn in _public_callables()}  # type: ignore[attr-defined]
    assert declared <= grants
    assert grants >= rbac.KOPF_PERMISSIONS
    for needed in [
        ("ray.io", "rayjobs", "create"),
        ("ray.io", "rayjobs", "watch"),
        ("sftjob.dev", "sftjobs", "watch"),
        ("sftjob.dev", "sftjobs", "patch"),
        ("sftjob.dev", "sftjobs/status", "patch"),
        ("", "events", "create"),
        ("", "secrets", "get"),
    ]:
        assert needed in grants, needed
    assert {v for g, r, v in grants if r == "secrets"} == {"get"}, "never list or watch Secrets"
