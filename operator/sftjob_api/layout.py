"""A job's output location: where each file lives, and which artifacts a spec produces.

The trainer writes these paths and the operator, `sftjob eval` and users read them; both sides import
this module, so the layout cannot drift. docs/trainer.md shows the tree.
"""

from __future__ import annotations

from dataclasses import dataclass

from sftjob_api.base import StorageUri
from sftjob_api.types import SFTJobSpec

PROGRESS_FILE = "progress.json"
METRICS_FILE = "metrics.jsonl"
MANIFEST_FILE = "manifest.json"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
# The prepared dataset, cached by content hash, so a retry in a fresh pod skips tokenisation.
DATA_CACHE_DIR = "cache/data"


@dataclass(frozen=True)
class Artifacts:
    """Which model directories a job's output holds once it succeeded."""

    adapter: bool
    """`adapter/`: the PEFT adapter (adapter methods with `output.saveAdapter`)."""
    model: bool
    """`model/`: full weights (full and freeze, or LoRA/QLoRA with `output.mergeAdapter`)."""


def artifacts_for(spec: SFTJobSpec) -> Artifacts:
    """The model directories `spec` produces: the one answer the trainer, the operator and the CLI ask."""
    method, output = spec.method, spec.output
    return Artifacts(
        adapter=method.is_adapter and output.save_adapter,
        model=not method.is_adapter or (method.can_merge and output.merge_adapter),
    )


def job_output_uri(output_uri: str, name: str, namespace: str | None) -> StorageUri:
    """The directory of one job's artifacts: `<output>/<namespace>/<name>` (local runs: `<output>/<name>`).

    Names are DNS-1123 labels (validated by the API types), so they cannot add path segments
    such as `..` or `/`.

    Args:
        output_uri: `spec.output.uri`.
        name: The SFTJob name.
        namespace: The SFTJob namespace; None for local runs.

    Returns:
        The job's output URI, without a trailing slash.
    """
    parts = [output_uri.rstrip("/")] + ([namespace] if namespace else []) + [name]
    return "/".join(parts)


__all__ = [
    "ADAPTER_DIR",
    "CHECKPOINTS_DIR",
    "DATA_CACHE_DIR",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "MODEL_DIR",
    "PROGRESS_FILE",
    "Artifacts",
    "artifacts_for",
    "job_output_uri",
]
