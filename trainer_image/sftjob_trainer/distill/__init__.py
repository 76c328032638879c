"""Distillation: a teacher answers prompts (or grows instructions), the answers are filtered, the job trains on them.

`distill(spec, output_uri, progress)` is the whole step (docs/distillation.md); the modules are its parts:
`teacher` (the Ray Data LLM pipeline), `cache` (replies cached under the output), `prompts` (reading prompts and
evaluation texts), `filters` (pure filters), `self_instruct` (Self-Instruct and Evol-Instruct).
"""

from sftjob_trainer.distill.core import (
    DISTILLED_FILE,
    REJECTED_FILE,
    STATS_FILE,
    DistillOptions,
    DistillResult,
    GenerationProgress,
    api_key_from_env,
    distill,
    with_distilled_train,
)

__all__ = [
    "DISTILLED_FILE",
    "REJECTED_FILE",
    "STATS_FILE",
    "DistillOptions",
    "DistillResult",
    "GenerationProgress",
    "api_key_from_env",
    "distill",
    "with_distilled_train",
]
