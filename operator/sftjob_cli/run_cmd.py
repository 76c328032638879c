"""`sftjob run job.yaml [--output DIR]`: run an SFTJob on a local Ray cluster with a live progress bar.

The same trainer as in the cluster (`sftjob_trainer.driver.run_job`); the bar follows the job's
progress.json, which is exactly what the operator reads: with `spec.distillation` it first shows `Generating`
with the prompts answered of the total (from progress.json's message), the teacher's tokens/s and the ETA.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any

# Seconds between two reads of progress.json for the bar (the trainer writes it every few seconds).
POLL_S = 1.0


def register(commands: Any) -> None:
    """Add the `run` subcommand."""
    run = commands.add_parser("run", help="run an SFTJob locally on Ray (validates, preflights, trains, exports)")
    run.add_argument("file", metavar="FILE", help="SFTJob YAML file")
    run.add_argument("--output", metavar="DIR", help="output directory or s3:// URI (overrides spec.output.uri)")
    run.add_argument("--ray-address", metavar="ADDRESS", help="join this Ray cluster (default: start a local one)")
    run.add_argument("--no-progress", action="store_true", help="no live progress bar (e.g. in CI logs)")
    run.set_defaults(handler=_cmd_run)


def _follow(output_uri: str, done: threading.Event) -> None:
    """Draw a progress bar from progress.json until `done` is set."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sftjob_api.layout import PROGRESS_FILE
    from sftjob_api.progress import ProgressFile
    from sftjob_trainer import object_store
    from sftjob_trainer.distill.driver_step import generation_counts
    from sftjob_trainer.reporting import eta_seconds, format_duration

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("Initializing", total=None, detail="")
        while not done.wait(POLL_S):
            try:
                data = object_store.read_bytes(object_store.join(output_uri, PROGRESS_FILE))
                state = ProgressFile.model_validate_json(data)
            except (object_store.StorageError, ValueError):
                continue
            details = []
            if state.metrics.train_loss is not None:
                details.append(f"loss {state.metrics.train_loss:.4f}")
            if state.metrics.eval_loss is not None:
                details.append(f"eval {state.metrics.eval_loss:.4f}")
            eta = eta_seconds(state)
            counts = generation_counts(state.message) if state.phase == "Generating" else None
            if counts is not None:  # distillation: the teacher's answers, prompts done of total
                details = [f"{state.tokens_per_second:.0f} tok/s"] if state.tokens_per_second else []
                if eta is not None:
                    details.append(f"ETA {format_duration(eta)}")
                bar.update(task, description="Generating", completed=counts[0], total=counts[1],
                           detail="  ".join(details))
                continue
            if eta is not None and state.phase == "Running":
                details.append(f"ETA {format_duration(eta)}")
            bar.update(task, description=state.phase, total=state.total_steps, completed=state.step,
                       detail="  ".join(details))


def _cmd_run(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    from sftjob_cli.common import EXIT_INTERNAL, EXIT_INVALID, load_job

    job = load_job(args.file)
    if job is None:
        return EXIT_INVALID
    from sftjob_api.codes import USER_ERRORS, ErrorCode
    from sftjob_trainer.driver import run_job
    from sftjob_trainer.interrupts import EXIT_CANCELLED
    from sftjob_trainer.job_context import context_for
    from sftjob_trainer.trainer_error import TrainerError

    try:
        ctx = context_for(job, 1, args.output)
    except TrainerError as err:
        print(f"{args.file}: {err.field}: {err.message}", file=sys.stderr)
        return EXIT_INVALID
    done = threading.Event()
    follower = None
    if not args.no_progress:
        follower = threading.Thread(target=_follow, args=(ctx.output_uri, done), daemon=True)
        follower.start()
    try:
        result = run_job(ctx, ray_address=args.ray_address)
    except TrainerError as err:
        done.set()
        if follower is not None:
            follower.join()
        where = f" ({err.field})" if err.field else ""
        outcome = "stopped" if err.code == ErrorCode.CANCELLED else "failed"
        print(f"sftjob run: {outcome}: {err.code}{where}: {err.message}", file=sys.stderr)
        if err.code == ErrorCode.CANCELLED:
            return EXIT_CANCELLED
        # What no rerun can fix until the user changes something is bad input: the job file, its data, model or
        # credentials, or resources this machine lacks. A forgetting gate is an outcome of the training itself.
        return EXIT_INVALID if err.code in USER_ERRORS else EXIT_INTERNAL
    finally:
        done.set()
    if follower is not None:
        follower.join()
    metrics = result.progress.metrics
    print(f"artifacts: {result.output_uri}")
    distilled = result.progress.distillation
    if distilled is not None:
        dropped = ", ".join(f"{reason} {count}" for reason, count in distilled.dropped.items()) or "none"
        print(f"distilled: {distilled.kept} of {distilled.responses} teacher answers kept (dropped: {dropped}); "
              f"{distilled.requests} requests, {distilled.cached_requests} cached, in {distilled.uri}")
    print(f"steps: {result.progress.step}/{result.progress.total_steps}  train loss: {metrics.train_loss}  "
          f"eval loss: {metrics.eval_loss}  token accuracy: {metrics.token_accuracy}")
    evaluation = result.progress.evaluation
    for metric in evaluation.metrics if evaluation else []:
        print(f"held-out {metric.name} ({metric.samples} prompts): base {metric.base:.4g} -> fine-tuned "
              f"{metric.tuned:.4g}")
    for task in evaluation.tasks if evaluation else []:
        print(f"lm-eval {task.task} {task.metric}: base {task.base} -> fine-tuned {task.tuned}")
    if evaluation is not None and evaluation.judge is not None:
        judge = evaluation.judge
        print(f"judge {judge.model}: unavailable: {judge.error}" if judge.error else
              f"judge {judge.model}: fine-tuned win rate {judge.win_rate} "
              f"(95% interval {judge.ci_low}-{judge.ci_high}, {judge.prompts} prompts)")
    if evaluation is not None and evaluation.seconds is not None:
        print(f"evaluation: {evaluation.seconds:.1f} s; report: {result.output_uri}/eval_report.md")
    forgetting = evaluation.forgetting if evaluation else None
    if forgetting is not None:
        print(forgetting.summary())
        if forgetting.exceeded:  # onForgetting: fail ended above, with the error
            print("DEGRADED: the fine-tuned model forgot more than evaluation.maxForgetting allows; the outputs are "
                  "kept and marked degraded in manifest.json and README.md (onForgetting: degrade)")
    return 0
