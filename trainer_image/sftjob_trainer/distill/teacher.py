"""Ask the teacher: chat-completion requests through a Ray Data LLM pipeline (`ray.data.llm`).

`generate()` turns requests into a Ray Dataset and runs it through
`build_processor(HttpRequestProcessorConfig(...))`: the HTTP stage runs in a pool of Ray Data actors, so a
KubeRay cluster spreads it the way it spreads any Ray Data job. No thread pool here: Ray Data does the
concurrency, and the replies stream back to the driver block by block (`on_replies`), so what has been answered
survives a teacher that goes away halfway.

Concurrency. The HTTP stage sends the requests of one batch one after the other, and Ray Data runs up to
`ASYNC_BATCHES_PER_ACTOR` batches of one task at once in an actor (its async-UDF default). With one request
per batch and blocks of `per_actor` rows, each actor has at most `per_actor` requests in flight: `per_actor` is
the largest divisor of `teacher.concurrency` up to 4, and the pool has `concurrency / per_actor` actors, so
at most `teacher.concurrency` requests are ever in flight.

Retries (the processor's own): a request that times out (`teacher.timeoutSeconds`, an aiohttp total timeout:
a hung connection counts), cannot connect, or is answered 408, 429, 502, 503 or 504 is sent again up to
`teacher.maxRetries` times, sleeping `base * 2**k` seconds after the k-th failed try (base 1 s: 1, 2, 4, 8,
16 s; no jitter, no `Retry-After`; the stage also sleeps after the last try). So one request takes at most
`(maxRetries + 1) * timeoutSeconds + (2**(maxRetries + 1) - 1) * base` seconds before the run gives up.
Gaps of the stage, closed here through its `session_factory` option (an aiohttp session whose
`raise_for_status` hook sees every response before the stage does):

- 500, 501 and 505+ are not in the stage's retry list, and their (often non-JSON) body would fail the whole run
  at once: the hook turns them into a connection error, which the stage retries with the same budget;
- a 2xx that is not JSON (a gateway's HTML page) would fail the run the same way: retried likewise;
- 401 and 403 (a wrong or missing key), 404 (a wrong endpoint or model) and any other 4xx that is not JSON fail
  the run at once, with an error naming the field to fix; other 4xx answered with JSON (400, 413, 422: e.g. a
  prompt longer than the teacher's context) come back as per-request errors and are dropped as `teacher_error`.

A request that has spent its retries fails the Ray Data run (Ray Data aborts on the first failed block): the
replies already streamed are kept by the caller, and the failure becomes the retryable `TeacherUnavailable`.
Replies still inside the pipeline at that moment (at most about `concurrency` plus the blocks Ray Data had
queued for the postprocess map) are lost, and asked for again by the next attempt.
The API key goes to the stage as an Authorization header and is scrubbed from every message raised here.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import aiohttp

from sftjob_api.codes import ErrorCode
from sftjob_api.types import DistillationSpec
from sftjob_trainer.errors import TrainerError

log = logging.getLogger(__name__)

# Ray Data runs at most this many batches of one task at once in an async-UDF actor
# (RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY's default).
ASYNC_BATCHES_PER_ACTOR: Final = 4
# CPU each HTTP actor (and each pre/postprocess task) reserves: they wait on sockets, so many fit beside the
# training workers.
ACTOR_CPUS: Final = 0.1
# Characters of a teacher's error kept in messages: enough for its reason, never a whole page.
ERROR_CHARS: Final = 300
# Marks the errors the session hook raises, so they can be told apart once Ray has wrapped them.
_MARK: Final = "sftjob-teacher-http-status="
# Statuses the Ray Data HTTP stage retries itself.
STAGE_RETRIED: Final = frozenset({408, 429, 502, 503, 504})
# Statuses that no retry can fix: the run fails at once.
FATAL_STATUSES: Final = frozenset({401, 403, 404})
CHAT_COMPLETIONS: Final = "/chat/completions"


@dataclass(frozen=True)
class TeacherConfig:
    """How to reach the teacher and how to sample: what the Ray Data pipeline needs (the key travels apart)."""

    endpoint: str
    """Base URL up to and including `/v1`."""
    model: str
    """The model name at the endpoint."""
    temperature: float = 0.7
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_tokens: int = 2048
    """Longest answer in tokens."""
    concurrency: int = 8
    """Requests in flight at most."""
    timeout_s: float = 300.0
    """Total timeout of one request."""
    max_retries: int = 4
    """Retries of one request (timeouts, connection errors, 408/429/5xx)."""
    retry_base_s: float = 1.0
    """Backoff base: the stage sleeps `retry_base_s * 2**k` after its k-th failed try."""

    @property
    def url(self) -> str:
        """The chat-completions URL."""
        return self.endpoint.rstrip("/") + CHAT_COMPLETIONS

    @classmethod
    def from_spec(cls, spec: DistillationSpec, retry_base_s: float = 1.0) -> TeacherConfig:
        """The config of `spec.teacher` and its sampling settings."""
        teacher = spec.teacher
        return cls(endpoint=teacher.endpoint, model=teacher.model, temperature=spec.temperature, top_p=spec.top_p,
                   max_tokens=spec.max_tokens, concurrency=teacher.concurrency, timeout_s=teacher.timeout_seconds,
                   max_retries=teacher.max_retries, retry_base_s=retry_base_s)

    def worst_case_seconds(self) -> float:
        """The longest one request can take before the run gives up on it."""
        return (self.max_retries + 1) * self.timeout_s + (2 ** (self.max_retries + 1) - 1) * self.retry_base_s


@dataclass(frozen=True)
class Request:
    """One chat-completion request; `key` addresses its reply in the cache."""

    key: str
    """Content hash of endpoint, model, messages, sampling settings and sample index (see `cache.request_key`)."""
    messages: tuple[tuple[str, str], ...]
    """(role, content) turns sent to the teacher."""


@dataclass(frozen=True)
class Reply:
    """What the teacher answered to one request."""

    key: str
    """The request's key."""
    content: str = ""
    """The answer (reasoning split off)."""
    reasoning: str = ""
    """The reasoning: `reasoning_content` / `reasoning` of the message, or a leading `<think>` block."""
    finish_reason: str = ""
    """`stop`, `length` (cut at max_tokens), ..."""
    prompt_tokens: int = 0
    """Prompt tokens, as the teacher counted them."""
    completion_tokens: int = 0
    """Completion tokens (reasoning included)."""
    error: str = ""
    """Why there is no answer (an error body the teacher sent instead); empty for an answer."""

    def to_json(self) -> dict[str, Any]:
        """The cache's form of the reply."""
        return {"key": self.key, "content": self.content, "reasoning": self.reasoning,
                "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "error": self.error}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reply:
        """Read the cache's form back."""
        return cls(key=str(data["key"]), content=str(data.get("content") or ""),
                   reasoning=str(data.get("reasoning") or ""), finish_reason=str(data.get("finish_reason") or ""),
                   prompt_tokens=int(data.get("prompt_tokens") or 0),
                   completion_tokens=int(data.get("completion_tokens") or 0), error=str(data.get("error") or ""))


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


_THINK = re.compile(r"^\s*<think>(.*?)(</think>|$)", re.DOTALL)


def split_reasoning(content: str) -> tuple[str, str]:
    """Split a leading `<think>...</think>` block off an answer.

    Args:
        content: The message content.

    Returns:
        (answer, reasoning); an unclosed `<think>` makes everything reasoning.
    """
    match = _THINK.match(content)
    if not match:
        return content, ""
    return content[match.end():].lstrip(), match.group(1).strip()


def parse_reply(key: str, body: Any) -> Reply:
    """Read a chat-completion response body (pure).

    Args:
        key: The request's key.
        body: The decoded JSON the teacher answered.

    Returns:
        The reply; `error` set when the body holds no choice (an error object instead).
    """
    if not isinstance(body, Mapping) or not body.get("choices"):
        error: Any = body.get("error") if isinstance(body, Mapping) else None
        if isinstance(error, Mapping):
            error = error.get("message") or json.dumps(error)
        text = str(error or body)[:ERROR_CHARS]
        return Reply(key=key, error=text or "the teacher answered no choices")
    choice = body["choices"][0]
    message = choice.get("message") or {}
    content = str(message.get("content") or "")
    reasoning = str(message.get("reasoning_content") or message.get("reasoning") or "")
    if not reasoning:
        content, reasoning = split_reasoning(content)
    usage = body.get("usage") or {}
    return Reply(key=key, content=content, reasoning=reasoning.strip(), finish_reason=str(choice.get("finish_reason")
                 or ""), prompt_tokens=int(usage.get("prompt_tokens") or 0),
                 completion_tokens=int(usage.get("completion_tokens") or 0))


def split_concurrency(concurrency: int) -> tuple[int, int]:
    """(requests per actor, actors) whose product is exactly `concurrency`.

    Args:
        concurrency: `teacher.concurrency`.

    Returns:
        The largest divisor of `concurrency` up to ASYNC_BATCHES_PER_ACTOR, and the actor count.
    """
    per_actor = max(d for d in range(1, ASYNC_BATCHES_PER_ACTOR + 1) if concurrency % d == 0)
    return per_actor, concurrency // per_actor


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


def _payload(row: dict[str, Any], model: str, temperature: float, top_p: float, max_tokens: int) -> dict[str, Any]:
    messages = [{"role": role, "content": content} for role, content in json.loads(row["messages"])]
    return {"payload": {"model": model, "messages": messages, "temperature": temperature, "top_p": top_p,
                        "max_tokens": max_tokens}}


def _plain(value: Any) -> Any:
    # Ray Data hands nested values back as numpy arrays and scalars.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _reply_row(row: dict[str, Any]) -> dict[str, Any]:
    return {"key": row["key"], "body": json.dumps(row.get("http_response"), default=_plain)}


# ------------------------------------------------------------------------------------------------ driver


def generate(requests: Sequence[Request], config: TeacherConfig, api_key: str | None,
             on_replies: Callable[[list[Reply]], None]) -> None:
    """Send `requests` through a Ray Data LLM pipeline; hand each streamed block of replies to `on_replies`.

    Ray must be initialised (the driver's cluster); otherwise Ray Data starts a local one.

    Args:
        requests: The requests (distinct keys).
        config: Endpoint, sampling, concurrency, timeout and retries.
        api_key: Bearer token, or None for no Authorization header.
        on_replies: Called in this thread with every block of replies, as they arrive.

    Raises:
        TrainerError: `TeacherUnavailable` (retryable) when a request spent its retries or the teacher answered
            garbage; `AccessDenied` (401/403) or `InvalidSpec` (404), not retryable. The key is never in it.
    """
    if not requests:
        return
    import ray.data
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = False  # progress goes to on_replies' caller (progress.json, the CLI's bar)
    per_actor, actors = split_concurrency(config.concurrency)
    actors = max(1, min(actors, math.ceil(len(requests) / per_actor)))
    processor_config = HttpRequestProcessorConfig(
        url=config.url,
        headers={"Authorization": f"Bearer {api_key}"} if api_key else None,
        max_retries=config.max_retries,
        base_retry_wait_time_in_s=config.retry_base_s,
        session_factory=partial(teacher_session, config.timeout_s),
        batch_size=1,
        concurrency=(actors, actors),
        http_request_stage={"num_cpus": ACTOR_CPUS},
    )
    processor = build_processor(
        processor_config,
        preprocess=partial(_payload, model=config.model, temperature=config.temperature, top_p=config.top_p,
                           max_tokens=config.max_tokens),
        postprocess=_reply_row,
        # Light maps: with the default of one CPU each they would queue behind training workers, and replies the
        # HTTP stage has received but not yet handed on are lost when a failed request aborts the run.
        preprocess_map_kwargs={"num_cpus": ACTOR_CPUS},
        postprocess_map_kwargs={"num_cpus": ACTOR_CPUS},
    )
    items = [{"key": r.key, "messages": json.dumps(r.messages)} for r in requests]
    dataset = processor(ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / per_actor)))
    failure = TeacherFailure(endpoint=config.endpoint, total=len(requests))
    log.info("asking %s (%s) %d requests, at most %d in flight (%d actors x %d)", config.endpoint, config.model,
             len(requests), actors * per_actor, actors, per_actor)
    try:
        # No prefetch: with it, Ray Data holds each block back until the next one is ready, so the replies before
        # a hung request would not reach the cache until it ends.
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
            pairs = zip(batch["key"], batch["body"], strict=True)
            replies = [parse_reply(str(key), json.loads(str(body))) for key, body in pairs]
            failure.done += len(replies)
            on_replies(replies)
    except TrainerError:
        raise
    except Exception as err:  # Ray wraps the stage's error (RayTaskError, UserCodeException, ...)
        raise failure_error(str(err), config, failure, api_key) from None
    finally:
        context.enable_progress_bars = bars


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
            return TrainerError("AccessDenied", f"{where} refused the request (HTTP {code} {reason}): check the "
                                "OPENAI_API_KEY of distillation.teacher.secretRef", "distillation.teacher.secretRef",
                                retryable=False)
        return TrainerError("InvalidSpec", f"{where} answered HTTP {code} {reason}: check distillation.teacher."
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
