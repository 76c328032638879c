"""The conditions of an SFTJob's status and the Kubernetes events of their transitions. Pure: no I/O, no clock.

A status's conditions follow from its phase and error, plus two that reconciles observe: `PodsHealthy` (the pod
diagnosis) and `Stalled` (progress.json stopped moving). Events are posted for what changed from the status as
last written, so a reconcile that changes nothing posts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sftjob_api.codes import ErrorCode, Reason
from sftjob_api.types import Condition, ErrorStatus, SFTJob, SFTJobStatus
from sftjob_operator.k8s_text import camel_reason, clip
from sftjob_operator.pods import PodProblem, summarize

EventType = Literal["Normal", "Warning"]

Wanted = tuple[str, bool, str, str]
"""A condition to set: type, truth, reason, message."""

# Status phases of a running attempt: the `Running` condition is True with the phase as its reason.
ACTIVE_PHASES = ("Initializing", "Generating", "Running", "Exporting")
# The conditions a reconcile that does not look at pods or progress carries over unchanged.
_CARRIED_CONDITIONS = (Reason.PODS_HEALTHY, ErrorCode.STALLED)


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to post on the SFTJob."""

    type: EventType
    reason: str
    message: str


def condition(status: SFTJobStatus, ctype: str) -> Condition | None:
    """The condition of type `ctype` of a status, if it has one."""
    return next((c for c in status.conditions if c.type == ctype), None)


def wanted(existing: Condition | None) -> Wanted | None:
    """A condition as set before, to set again unchanged."""
    if existing is None:
        return None
    return (existing.type, existing.status == "True", existing.reason, existing.message)


def pod_observation(previous: SFTJobStatus, pods: list[PodProblem] | None) -> Wanted | None:
    """`PodsHealthy` as this reconcile saw the pods; None when it did not look or nothing ever showed."""
    if pods is None:
        return None
    if pods:
        reason, message = summarize(pods)
        return (Reason.PODS_HEALTHY, False, reason, message)
    if condition(previous, Reason.PODS_HEALTHY) is None:
        return None
    return (Reason.PODS_HEALTHY, True, Reason.HEALTHY, "")


def conditions_for(
    status: SFTJobStatus,
    previous: SFTJobStatus,
    job: SFTJob | None,
    reason: str,
    message: str,
    observed: tuple[Wanted, ...] = (),
) -> list[Wanted]:
    """The conditions of a status: those its phase and error imply, then `PodsHealthy` and `Stalled`.

    Args:
        status: The new status (phase and error set).
        previous: The status as last written.
        job: The job (None when its spec is invalid).
        reason: The reason of the phase.
        message: The message of the phase.
        observed: `PodsHealthy` / `Stalled` as this reconcile observed them; a type not given keeps its
            previous value (the reconcile did not look), and one never set stays absent.

    Returns:
        The conditions to set.
    """
    phase = status.phase
    invalid = status.error is not None and status.error.code == ErrorCode.INVALID_SPEC
    result: list[Wanted] = [
        (
            Reason.VALIDATED,
            not invalid,
            ErrorCode.INVALID_SPEC if invalid else Reason.VALID,
            status.error.message if invalid and status.error else "",
        )
    ]
    running = phase in ACTIVE_PHASES
    result.append(("Running", running, phase, message if running else ""))
    suspended_before = any(c.type == "Suspended" for c in previous.conditions)
    if phase == "Suspended" or suspended_before or (job is not None and job.spec.run_policy.suspend):
        result.append(("Suspended", phase == "Suspended", reason if phase == "Suspended" else Reason.RESUMED, ""))
    if phase == "Succeeded":
        result.append(("Succeeded", True, "Succeeded", message))
        degraded = _degraded(status)
        if degraded is not None:
            result.append((Reason.DEGRADED, True, ErrorCode.FORGETTING_EXCEEDED, degraded))
        unavailable = _judge_unavailable(status)
        if unavailable is not None:
            result.append((Reason.JUDGE_UNAVAILABLE, True, Reason.JUDGE_UNAVAILABLE, unavailable))
    if phase == "Failed" and status.error is not None:
        result.append(("Failed", True, status.error.code, status.error.message))
    given = {w[0]: w for w in observed}
    for ctype in _CARRIED_CONDITIONS:
        if ctype == Reason.PODS_HEALTHY and status.attempt != previous.attempt:
            continue  # it described the pods of the attempt before (its failure message keeps what they showed)
        kept = given.get(ctype) or wanted(condition(previous, ctype))
        if kept is not None:
            result.append(kept)
    return result


def set_conditions(status: SFTJobStatus, previous: SFTJobStatus, conditions: list[Wanted], now: str) -> None:
    """Replace the conditions of `status`; one that keeps its truth keeps its `lastTransitionTime`.

    Args:
        status: The new status (its `observedGeneration` set).
        previous: The status as last written.
        conditions: The conditions to set.
        now: The current time, formatted.
    """
    before = {c.type: c for c in previous.conditions}
    result = []
    for ctype, truth, reason, message in conditions:
        value: Literal["True", "False"] = "True" if truth else "False"
        old = before.get(ctype)
        since = old.last_transition_time if old is not None and old.status == value else now
        result.append(
            Condition(
                type=ctype,
                status=value,
                reason=camel_reason(reason),
                message=clip(message),
                last_transition_time=since,
                observed_generation=status.observed_generation,
            )
        )
    status.conditions = result


def condition_events(previous: SFTJobStatus, status: SFTJobStatus) -> list[Event]:
    """Warning events for `PodsHealthy` turning False (or to another reason) and `Stalled` turning True."""
    events = []
    old, new = condition(previous, Reason.PODS_HEALTHY), condition(status, Reason.PODS_HEALTHY)
    if new is not None and new.status == "False" and (old is None or old.status == "True" or old.reason != new.reason):
        events.append(Event("Warning", new.reason, new.message))
    old, new = condition(previous, ErrorCode.STALLED), condition(status, ErrorCode.STALLED)
    if new is not None and new.status == "True" and (old is None or old.status == "False"):
        events.append(Event("Warning", ErrorCode.STALLED, new.message))
    return events


def transition_events(previous: SFTJobStatus, status: SFTJobStatus) -> list[Event]:
    """The event of a phase change, and the Failed event of an error that changed while the job stayed Failed."""
    phase = status.phase
    if previous.phase == phase:
        if phase == "Failed" and status.error is not None and _message(previous.error) != status.error.message:
            return [_failed(status.error)]
        return []
    name = status.ray_job.name if status.ray_job else ""
    if phase == "Running":
        return [Event("Normal", "Running", f"training on RayJob {name}")]
    if phase == "Generating":
        return [Event("Normal", "Generating", f"generating the training data with the teacher on RayJob {name}")]
    if phase == "Suspended":
        return [Event("Normal", "Suspended", "no Ray pods run while suspended")]
    if previous.phase == "Suspended":
        return [Event("Normal", Reason.RESUMED, "resumed; the trainer continues from the latest checkpoint")]
    if phase == "Succeeded":
        where = status.output.uri if status.output else ""
        degraded, unavailable = _degraded(status), _judge_unavailable(status)
        return ([Event("Normal", "Succeeded", f"artifacts in {where}")]
                + ([Event("Warning", ErrorCode.FORGETTING_EXCEEDED, clip(degraded))] if degraded is not None else [])
                + ([Event("Warning", Reason.JUDGE_UNAVAILABLE, clip(unavailable))] if unavailable is not None else []))
    if phase == "Failed" and status.error is not None:
        return [_failed(status.error)]
    return []


def _failed(error: ErrorStatus) -> Event:
    return Event("Warning", "Failed", clip(f"{error.code}: {error.message}"))


def _message(error: ErrorStatus | None) -> str | None:
    return error.message if error is not None else None


def _degraded(status: SFTJobStatus) -> str | None:
    """Why a job's outputs are kept but marked degraded (`evaluation.onForgetting: degrade`), or None."""
    forgetting = status.evaluation.forgetting if status.evaluation else None
    if forgetting is None or not forgetting.exceeded:
        return None
    return f"{forgetting.summary()}; the outputs are kept and marked degraded (onForgetting: degrade)"


def _judge_unavailable(status: SFTJobStatus) -> str | None:
    """Why the evaluation has no judgement (`evaluation.judge` stayed unreachable), or None."""
    judge = status.evaluation.judge if status.evaluation else None
    if judge is None or not judge.error:
        return None
    return (f"the judge {judge.model} stayed unreachable, so eval_report.md has no judgement: {judge.error}; "
            "the training succeeded (`sftjob eval OUTPUT` asks again)")


__all__ = [
    "ACTIVE_PHASES",
    "Event",
    "EventType",
    "Wanted",
    "condition",
    "condition_events",
    "conditions_for",
    "pod_observation",
    "set_conditions",
    "transition_events",
    "wanted",
]
