"""The SFTJob operator: Kopf handlers (thin) over a service layer, pure builders and pure status derivation.

- `rayjob` builds an attempt's RayJob (pure); `status` derives the status and next actions (pure);
- `kube` is the only module that talks to the Kubernetes API; `storage` reads `progress.json`;
- `service` orchestrates one reconcile; `handlers` is the Kopf glue; `settings` reads the environment;
- `permissions.required_rbac_rules()` is the ClusterRole the operator needs (the Helm chart is checked against it).

Run it with `python -m sftjob_operator` (see docs/operator.md).
"""
