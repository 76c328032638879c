"""`python -m sftjob_trainer`: run the SFTJob given in SFTJOB_CONFIG (JSON) or SFTJOB_CONFIG_FILE.

Exit codes: 0 success, 1 a failure recorded in progress.json (`phase: Failed`, `error`), 130 stopped by SIGINT or
SIGTERM (Kubernetes sends SIGTERM when it deletes the pod), recorded as error `Cancelled`. Expected failures print
one line to stderr, never a traceback.
"""

from __future__ import annotations

import os
import sys

from sftjob_api.codes import ErrorCode
from sftjob_trainer.interrupts import EXIT_CANCELLED
from sftjob_trainer.trainer_error import TrainerError


def main() -> int:
    """Run the configured job; returns the exit code."""
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    from sftjob_trainer.driver import run_job
    from sftjob_trainer.job_context import load_context

    try:
        ctx = load_context()
        result = run_job(ctx)
    except TrainerError as err:
        print(f"sftjob-trainer: {err.code}: {err.message}", file=sys.stderr)
        return EXIT_CANCELLED if err.code == ErrorCode.CANCELLED else 1
    print(f"sftjob-trainer: succeeded after {result.progress.step} steps; artifacts in {result.output_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
