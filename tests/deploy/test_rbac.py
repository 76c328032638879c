"""The chart grants exactly the permissions the operator's code uses: no more, no less, no wildcard.

`sftjob_operator.permissions.required_rbac_rules()` lists every (API group, resource, verb) the operator
calls, Kopf's own needs included. The chart's (Cluster)Role rules are the YAML files in
helm/files/rbac/, which templates/rbac.yaml inserts verbatim with `.Files.Get`, so the rules parsed
here are the rules Helm renders; `helm lint` (test_chart.py) proves the template renders.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
RBAC_DIR = REPO / "helm" / "files" / "rbac"
TEMPLATE = REPO / "helm" / "templates" / "rbac.yaml"
CLUSTER_FILE = RBAC_DIR / "cluster-scoped.yaml"
NAMESPACED_FILE = RBAC_DIR / "namespaced.yaml"

# Cluster-scoped resources the operator could touch; a Role cannot grant these, so they must sit in
# cluster-scoped.yaml (a ClusterRole in both modes).
CLUSTER_SCOPED = {
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("", "namespaces"),
    ("kopf.dev", "clusterkopfpeerings"),
    ("", "nodes"),
    ("scheduling.k8s.io", "priorityclasses"),
}

Grant = tuple[str, str, str, str]  # (apiGroup, resource, verb, resourceName or "")


def _grants(rules: list[dict[str, Any]]) -> set[Grant]:
    grants: set[Grant] = set()
    for rule in rules:
        assert not rule.get("nonResourceURLs"), rule
        names = rule.get("resourceNames") or [""]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for name in names:
                        grants.add((group, resource, verb, name))
    return grants


def _rules(path: Path) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = yaml.safe_load(path.read_text()) or []
    return rules


def _required() -> list[dict[str, Any]]:
    from sftjob_operator.permissions import required_rbac_rules

    return required_rbac_rules()


def test_chart_grants_exactly_what_the_operator_requires() -> None:
    granted = _grants(_rules(CLUSTER_FILE) + _rules(NAMESPACED_FILE))
    required = _grants(_required())
    assert sorted(required - granted) == [], "the operator calls these and the chart does not grant them"
    assert sorted(granted - required) == [], "the chart grants these and the operator never calls them"


def test_no_wildcards() -> None:
    for path in (CLUSTER_FILE, NAMESPACED_FILE):
        for grant in _grants(_rules(path)):
            assert "*" not in grant, f"{path.name}: {grant}"


def test_cluster_scoped_resources_are_granted_by_the_cluster_role_only() -> None:
    cluster = {(g, r) for g, r, _, _ in _grants(_rules(CLUSTER_FILE))}
    namespaced = {(g, r) for g, r, _, _ in _grants(_rules(NAMESPACED_FILE))}
    assert cluster <= CLUSTER_SCOPED
    assert not namespaced & CLUSTER_SCOPED


def test_every_rule_says_why() -> None:
    for path in (CLUSTER_FILE, NAMESPACED_FILE):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.startswith("- "):
                assert lines[number - 1].startswith("#"), f"{path.name}:{number + 1}: a rule without a comment above it"


def test_secrets_are_never_listed_or_watched() -> None:
    # The operator reads only the Secrets a job names; list/watch would expose every Secret in a namespace.
    grants = _grants(_rules(NAMESPACED_FILE))
    verbs = {verb for group, resource, verb, _ in grants if (group, resource) == ("", "secrets")}
    assert verbs <= {"get"}


def test_template_inserts_the_rule_files_in_both_modes() -> None:
    text = TEMPLATE.read_text()
    # All namespaces: one ClusterRole with both files; namespaced: the cluster file in the ClusterRole,
    # the namespaced file in a Role per watched namespace.
    cluster_role = text[text.index("kind: ClusterRole\n") : text.index("kind: ClusterRoleBinding")]
    assert '{{ .Files.Get "files/rbac/cluster-scoped.yaml" }}' in cluster_role
    assert re.search(
        r'{{- if not \.Values\.watchNamespaces }}\n{{ \.Files\.Get "files/rbac/namespaced\.yaml" }}\n{{- end }}',
        cluster_role,
    )
    role = text[text.index("{{- range .Values.watchNamespaces }}") :]
    assert "kind: Role\n" in role and "kind: RoleBinding\n" in role
    assert '{{ $.Files.Get "files/rbac/namespaced.yaml" }}' in role
    # The rule files are YAML lists at column 0 right under `rules:`: no indentation to get wrong.
    for path in (CLUSTER_FILE, NAMESPACED_FILE):
        assert all(not line.startswith(" -") for line in path.read_text().splitlines()), path.name
