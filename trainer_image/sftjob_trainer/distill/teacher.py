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

What is sent and answered is in `teacher_api`; how answers and failures are judged is in `teacher_failures`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final

from sftjob_trainer.distill.teacher_api import Reply, Request, TeacherConfig, parse_reply
from sftjob_trainer.distill.teacher_failures import TeacherFailure, failure_error, teacher_session
from sftjob_trainer.trainer_error import TrainerError

log = logging.getLogger(__name__)

# Ray Data runs at most this many batches of one task at once in an async-UDF actor
# (RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY's default).
ASYNC_BATCHES_PER_ACTOR: Final = 4
# CPU each HTTP actor (and each pre/postprocess task) reserves: they wait on sockets, so many fit beside the
# training workers.
ACTOR_CPUS: Final = 0.1


def split_concurrency(concurrency: int) -> tuple[int, int]:
    """(requests per actor, actors) whose product is exactly `concurrency`.

    Args:
        concurrency: `teacher.concurrency`.

    Returns:
        The largest divisor of `concurrency` up to ASYNC_BATCHES_PER_ACTOR, and the actor count.
    """
    per_actor = max(d for d in range(1, ASYNC_BATCHES_PER_ACTOR + 1) if concurrency % d == 0)
    return per_actor, concurrency // per_actor



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
