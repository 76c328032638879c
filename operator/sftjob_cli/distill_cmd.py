"""`sftjob distill FILE [--output DIR]`: run only the distillation step of an SFTJob locally and print its stats.

The same `sftjob_trainer.distill.distill` the job runs before training, on a local Ray cluster (or `--ray-address`),
writing the same files under the job's output: inspect `data/distilled.jsonl`, `data/distilled.rejected.jsonl` and
the counts before paying for training. A later `sftjob run` (or a rerun of this) reuses every cached answer.

Exit codes: 0 done, 2 bad input (the file, its prompts, the teacher's endpoint, model or key, or every answer
dropped), 1 the teacher stayed unreachable (rerun to continue from what was generated), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

RAY_DATA_LOG_LEVEL = "RAY_DATA_LOG_LEVEL"


def register(commands: Any) -> None:
    """Add the `distill` subcommand."""
    distill = commands.add_parser(
        "distill", help="run only the distillation step of an SFTJob (teacher answers, filters) and print the stats")
    distill.add_argument("file", metavar="FILE", help="SFTJob YAML file with spec.distillation")
    distill.add_argument("--output", metavar="DIR", help="output directory or s3:// URI (overrides spec.output.uri)")
    distill.add_argument("--ray-address", metavar="ADDRESS", help="join this Ray cluster (default: start a local one)")
    distill.add_argument("--no-progress", action="store_true", help="no live progress bar (e.g. in CI logs)")
    distill.add_argument("--json", action="store_true", help="print the stats as JSON (data/distilled.stats.json)")
    distill.set_defaults(handler=_cmd_distill)


def _load(path: str) -> Any:
    """The job of `path` if it is valid and has `spec.distillation`, else None (after saying why)."""
    from sftjob_cli.common import load_job

    job = load_job(path)
    if job is None:
        return None
    if job.spec.distillation is None:
        print(f"{path}: spec.distillation: not set, so there is nothing to generate: add a teacher and prompts "
              "(docs/distillation.md)", file=sys.stderr)
        return None
    return job


class _Bar:
    """A rich progress bar fed by distill()'s progress callback, one task per stage."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), transient=False)

    def __enter__(self) -> _Bar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, state: Any) -> None:
        if self._progress is None:
            return
        from sftjob_api.progress import format_duration

        if state.stage not in self._tasks:
            self._tasks[state.stage] = self._progress.add_task(state.stage, total=state.total, detail="")
        details = [f"{state.tokens_per_second:.0f} tok/s"] if state.tokens_per_second else []
        if state.eta_seconds is not None:
            details.append(f"ETA {format_duration(state.eta_seconds)}")
        self._progress.update(self._tasks[state.stage], completed=state.done, total=state.total,
                              detail="  ".join(details))


def _print_stats(stats: Any, rejected_uri: str) -> None:
    print(f"distilled: {stats.uri}")
    generated = f" ({stats.instructions_generated} instructions grown by Self-Instruct)" \
        if stats.instructions_generated is not None else ""
    print(f"prompts: {stats.prompts}{generated}  answers kept: {stats.kept} of {stats.responses}")
    dropped = ", ".join(f"{reason} {count}" for reason, count in stats.dropped.items()) or "none"
    print(f"dropped: {dropped}  (each with its reason in {rejected_uri})")
    print(f"requests: {stats.requests} sent, {stats.cached_requests} reused from the cache ({stats.cache})")
    print(f"tokens: {stats.prompt_tokens} prompt, {stats.completion_tokens} completion; {stats.seconds:.1f} s")


def _cmd_distill(args: argparse.Namespace) -> int:
    from sftjob_cli.common import EXIT_INTERNAL, EXIT_INVALID

    job = _load(args.file)
    if job is None:
        return EXIT_INVALID
    from sftjob_trainer import object_store
    from sftjob_trainer.distill import REJECTED_FILE, distill
    from sftjob_trainer.job_context import context_for
    from sftjob_trainer.trainer_error import TrainerError

    try:
        ctx = context_for(job, 1, args.output)
    except TrainerError as err:
        print(f"{args.file}: {err.field}: {err.message}", file=sys.stderr)
        return EXIT_INVALID
    import ray

    from sftjob_trainer.local_ray import init_ray, shutdown

    quiet = not os.environ.get("SFTJOB_DEBUG") and RAY_DATA_LOG_LEVEL not in os.environ
    if quiet:
        # Ray Data logs every dataset it runs, and a failed request as a stack trace: the error below says it all.
        # (Its logging is configured again for each dataset, from this variable.)
        os.environ[RAY_DATA_LOG_LEVEL] = "CRITICAL"
    started = not ray.is_initialized()
    if started:
        init_ray(args.ray_address)
    try:
        with _Bar(not args.no_progress and not args.json) as bar:
            result = distill(ctx.job.spec, ctx.output_uri, bar.update)
    except TrainerError as err:
        where = f" ({err.field})" if err.field else ""
        print(f"sftjob distill: failed: {err.code}{where}: {err.message}", file=sys.stderr)
        return EXIT_INTERNAL if err.retryable else EXIT_INVALID
    finally:
        if quiet:
            del os.environ[RAY_DATA_LOG_LEVEL]
        if started:
            shutdown()
    if args.json:
        print(json.dumps(result.stats.to_wire(), indent=2))
    else:
        _print_stats(result.stats, object_store.join(ctx.output_uri, REJECTED_FILE))
    return 0
