"""Derive an SFTJob's status, and what to do next, from what the operator observes. Pure: no I/O, no clock.

`derive_status` is the whole state machine. It takes the job, the status as last written, the
current attempt's RayJob (as KubeRay reports it), the trainer's `progress.json` and the time,
and returns the new status, the Kubernetes events for the transitions it saw, and the actions
that bring the world in line (create an attempt's RayJob, flip its `suspend`, delete it at the
deadline, delete the SFTJob after its TTL). The service layer performs those actions; nothing
here remembers anything between calls, so an operator restart at any moment is harmless.

It dispatches on the stage of the job to one step of `status_machine` (which, while an attempt exists,
dispatches on the attempt's state); the step returns the phase with its reason and message, and one closing
step (`_close`) sets the phase, the conditions and the events. The service writes the result once per reconcile.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.field_problems import FieldProblem
from sftjob_api.timestamps import format_rfc3339
from sftjob_api.types import ErrorStatus, SFTJob, SFTJobStatus
from sftjob_operator.conditions import condition_events, conditions_for, set_conditions, transition_events
from sftjob_operator.k8s_text import clip
from sftjob_operator.kuberay_state import TERMINAL_PHASES
from sftjob_operator.pods import PodProblem
from sftjob_operator.progress_status import ProgressSnapshot
from sftjob_operator.status_machine import Derivation, Outcome, Step, active, finished, first_attempt, recovered


def _new_step(
    job: SFTJob | None,
    previous: SFTJobStatus,
    generation: int | None,
    now: dt.datetime,
    snapshot: ProgressSnapshot | None = None,
    pods: list[PodProblem] | None = None,
) -> Step:
    status = previous.model_copy(deep=True)
    status.observed_generation = generation
    return Step(job, previous, Derivation(status=status), now, format_rfc3339(now), snapshot=snapshot, pods=pods)


def _invalid_before(previous: SFTJobStatus) -> bool:
    return previous.error is not None and previous.error.code == ErrorCode.INVALID_SPEC


def derive_status(
    job: SFTJob,
    previous: SFTJobStatus,
    *,
    generation: int | None,
    now: dt.datetime,
    rayjob: Mapping[str, Any] | None,
    snapshot: ProgressSnapshot | None = None,
    pods: list[PodProblem] | None = None,
) -> Derivation:
    """The new status of a valid job and the actions that lead there.

    Args:
        job: The validated job.
        previous: The status as last written (an empty `SFTJobStatus()` for a new job).
        generation: `metadata.generation` of the spec.
        now: The current time.
        rayjob: The RayJob of the current attempt (`previous.attempt`), None when it does not exist.
        snapshot: What was read from the output location; None when it was not read this time
            (the status then keeps what it had).
        pods: What `diagnose_pods` found on the current attempt's pods (empty: nothing wrong); None when
            they were not listed this time (the `PodsHealthy` condition then keeps what it had).

    Returns:
        The derivation.
    """
    step = _new_step(job, previous, generation, now, snapshot, pods)
    if _invalid_before(previous):
        return _close(step, recovered(step))
    if previous.phase in TERMINAL_PHASES:
        return finished(step)
    if not previous.attempt:
        return _close(step, first_attempt(step))
    return _close(step, active(step, rayjob))


def derive_invalid(
    previous: SFTJobStatus, problems: list[FieldProblem], *, generation: int | None, now: dt.datetime
) -> Derivation:
    """The status of a job whose spec does not validate: Failed with InvalidSpec, no retries.

    Args:
        previous: The status as last written.
        problems: What is wrong, as `check_document` reports it.
        generation: `metadata.generation` of the spec checked.
        now: The current time.

    Returns:
        The derivation; it deletes the current attempt's RayJob if one was running.
    """
    step = _new_step(None, previous, generation, now)
    if previous.phase in TERMINAL_PHASES and not _invalid_before(previous):
        # A finished job is not judged again: an edit of its (mutable) fields changes nothing.
        return step.out
    message = "; ".join(f"{p.field}: {p.message}" for p in problems)
    step.status.error = ErrorStatus(
        code=ErrorCode.INVALID_SPEC, message=clip(message), field=problems[0].field, retryable=False
    )
    if previous.attempt and previous.phase not in TERMINAL_PHASES and previous.ray_job is not None:
        step.out.delete_rayjob = previous.ray_job.name
    return _close(step, ("Failed", ErrorCode.INVALID_SPEC, message))


def _close(step: Step, outcome: Outcome) -> Derivation:
    """The closing step of every derivation that changes the job: its phase, conditions and events.

    Args:
        step: The derivation in the making (its status final but for the phase and conditions; its events
            those of its actions).
        outcome: The phase the step decided, with its reason and message.

    Returns:
        The derivation, complete.
    """
    phase, reason, message = outcome
    status, previous = step.status, step.previous
    status.phase = phase
    if phase in TERMINAL_PHASES:
        status.completion_time = status.completion_time or step.stamp
        if status.progress is not None:
            status.progress = status.progress.model_copy(update={"eta": None})
    wanted_conditions = conditions_for(status, previous, step.job, reason, message or reason, tuple(step.observed))
    set_conditions(status, previous, wanted_conditions, step.stamp)
    out = step.out
    out.events = step.seen + out.events + condition_events(previous, status) + transition_events(previous, status)
    return out


__all__ = ["Derivation", "ProgressSnapshot", "derive_invalid", "derive_status"]
