"""How the teacher's HTTP answers are judged in the Ray actors, and the error of a run that failed.

The HTTP stage's session hook (`teacher_session`) turns the answers no retry can fix into `TeacherRejected` and
the ones worth retrying into `TeacherServerError`, marked so that `failure_error` can tell them apart once Ray
has wrapped them. See `teacher` for the retry budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

import aiohttp

from sftjob_api.codes import ErrorCode
from sftjob_trainer.distill.teacher_api import ERROR_CHARS, TeacherConfig
from sftjob_trainer.trainer_error import TrainerError

# Marks the errors the session hook raises, so they can be told apart once Ray has wrapped them.
_MARK: Final = "sftjob-teacher-http-status="
# Statuses the Ray Data HTTP stage retries itself.
STAGE_RETRIED: Final = frozenset({408, 429, 502, 503, 504})
# Statuses that no retry can fix: the run fails at once.
FATAL_STATUSES: Final = frozenset({401, 403, 404})


@dataclass
class TeacherFailure:
    """Facts about a failed run, for its error message."""

    endpoint: str
    """The teacher's endpoint."""
    done: int = 0
    """Replies received before the failure."""
    total: int = 0
    """Requests in the run."""
    notes: list[str] = field(default_factory=list)
    """Extra sentences for the message."""


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` replaced by `***`."""
    return text.replace(secret, "***") if secret else text


# ------------------------------------------------------------------------------------------- in Ray actors


class TeacherServerError(aiohttp.ServerConnectionError):
    """A 5xx or a 2xx that is not JSON, raised as a connection error so that the HTTP stage retries it."""


class TeacherRejected(aiohttp.ClientError):
    """An answer no retry can fix (401, 403, 404, a 4xx that is not JSON): the stage lets it through, the run fails."""


async def _check_response(response: aiohttp.ClientResponse) -> None:
    """The session's `raise_for_status` hook: it sees every response before the HTTP stage reads it."""
    status = int(response.status)
    if status in STAGE_RETRIED:
        return
    is_json = "json" in (response.content_type or "")
    kind: type[aiohttp.ClientError] | None = None
    if status in FATAL_STATUSES or (400 <= status < 500 and not is_json):
        kind = TeacherRejected
    elif status >= 500 or (status < 300 and not is_json):
        kind = TeacherServerError
    if kind is not None:
        reason = response.reason or ""
        response.release()
        raise kind(f"{_MARK}{status} {reason}{'' if is_json else ' (not JSON)'}")


def teacher_session(timeout_s: float) -> aiohttp.ClientSession:
    """The aiohttp session of the HTTP stage (its `session_factory`): a total timeout and the status hook."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s), raise_for_status=_check_response)

# What the HTTP stage names as the last error of a request that spent its retries, in words.
_LAST_ERRORS: Final = {
    "TeacherServerError": "an HTTP 5xx answer, or one that is not JSON",
    "TimeoutError": "no answer within distillation.teacher.timeoutSeconds",
    "ClientConnectorError": "cannot connect",
    "ServerDisconnectedError": "the connection closed without an answer",
    "ClientOSError": "the connection failed",
}
_RETRIES_SPENT = re.compile(r"Reached maximum retries of (\d+).*?Previous Exception: (.*?)\. Full Traceback", re.DOTALL)
_STATUS = re.compile(re.escape(_MARK) + r"(\d{3}) ?([^\n'\"]*)")


def failure_error(text: str, config: TeacherConfig, failure: TeacherFailure, api_key: str | None) -> TrainerError:
    """The error of a failed run, from the text of what Ray raised (pure).

    Args:
        text: `str()` of the exception Ray Data raised.
        config: The teacher's config.
        failure: What had been received.
        api_key: The key, scrubbed from the message.

    Returns:
        `AccessDenied` for 401/403, `InvalidSpec` for 404 and other fatal 4xx, else `TeacherUnavailable`
        (retryable).
    """
    text = redact(text, api_key)
    where = f"the teacher {config.model} at {config.endpoint}"
    status = _STATUS.search(text)
    if status and (int(status.group(1)) in FATAL_STATUSES or 400 <= int(status.group(1)) < 500):
        code, reason = int(status.group(1)), status.group(2).strip()
        if code in (401, 403):
            return TrainerError(ErrorCode.ACCESS_DENIED,
                                f"{where} refused the request (HTTP {code} {reason}): check the "
                                "OPENAI_API_KEY of distillation.teacher.secretRef", "distillation.teacher.secretRef",
                                retryable=False)
        return TrainerError(ErrorCode.INVALID_SPEC,
                            f"{where} answered HTTP {code} {reason}: check distillation.teacher."
                            "endpoint (the base URL of an OpenAI-compatible API, up to and including /v1) and "
                            "distillation.teacher.model", "distillation.teacher.endpoint", retryable=False)
    spent = _RETRIES_SPENT.search(text)
    if spent:
        last = spent.group(2).strip()
        inner = _STATUS.search(last)
        last = f"HTTP {inner.group(1)} {inner.group(2).strip()}".strip() if inner else _LAST_ERRORS.get(last, last)
        cause = f"did not answer after {spent.group(1)} retries (last error: {last[:ERROR_CHARS]})"
    elif "ContentTypeError" in text:
        cause = "answered with something that is not JSON"
    else:
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(text).__name__)
        cause = f"failed: {first[:ERROR_CHARS]}"
    return TrainerError(
        ErrorCode.TEACHER_UNAVAILABLE,
        f"{where} {cause}; {failure.done} of {failure.total} answers of this run were received and are kept: the "
        "next attempt continues from them",
        "distillation.teacher.endpoint",
    )
