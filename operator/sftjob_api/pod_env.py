"""Environment variables the operator sets on the Ray pods and the trainer reads: one spelling for both sides."""

from __future__ import annotations

CONFIG_ENV = "SFTJOB_CONFIG"
"""The SFTJob as JSON (`apiVersion`, `kind`, `metadata.name`/`namespace`, `spec`): how the job reaches the trainer,
never as shell text."""

ATTEMPT_ENV = "SFTJOB_ATTEMPT"
"""The attempt number, from 1."""

TEACHER_KEY_ENV = "SFTJOB_TEACHER_API_KEY"
"""The distillation teacher's API key (`distillation.teacher.secretRef`'s `OPENAI_API_KEY`, by `secretKeyRef`)."""

JUDGE_KEY_ENV = "SFTJOB_JUDGE_API_KEY"
"""The evaluation judge's API key (`evaluation.judge.secretRef`'s `OPENAI_API_KEY`, by `secretKeyRef`)."""

OPENAI_API_KEY = "OPENAI_API_KEY"
"""The key of the teacher's and the judge's Secrets, and the variable the trainer falls back to when the
operator's variable is unset (a local run)."""


def role_prefix(role: str) -> str:
    """The prefix under which a role's Secret is exposed a second time (`envFrom` with a prefix).

    Args:
        role: The role whose `secretRef` it is: `mlflow`, `wandb`, `model`, `dataset` or `output`.

    Returns:
        `SFTJOB_<ROLE>_`, e.g. `SFTJOB_MLFLOW_`: so the trainer can tell one role's credentials from another's.
    """
    return f"SFTJOB_{role.upper()}_"
